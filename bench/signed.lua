-- wrk script for signed admin requests: sends a precomputed Backend.AI-signed header set and computes nothing
-- (wrk's Lua has no HMAC-SHA256). The signature covers the Date, so one set, dated when it was made, stays valid for
-- the daemon's clock-skew window (api.clock_skew_s, 15 minutes by default). benches/daemon.rs passes the headers in
-- the environment:
--   SIGNED_DATE, SIGNED_AUTHORIZATION, SIGNED_VERSION (X-BackendAI-Version), SIGNED_CONTENT_TYPE
-- The Host header wrk sends (127.0.0.1:PORT of the URL) must be the host the set was signed for.
wrk.headers["Date"] = os.getenv("SIGNED_DATE")
wrk.headers["Authorization"] = os.getenv("SIGNED_AUTHORIZATION")
wrk.headers["X-BackendAI-Version"] = os.getenv("SIGNED_VERSION")
wrk.headers["Content-Type"] = os.getenv("SIGNED_CONTENT_TYPE")
