//! etcd as Backend.AI lays it out: keys under `/sorna/{namespace}/` ([`keys`]) and a client whose every request is
//! bounded by a timeout, so a caller sees [`EtcdError::Unavailable`] instead of hanging.

pub mod keys;

use std::time::Duration;

use etcd_rs::{
    Client, ClientConfig, DeleteRequest, Endpoint, KeyRange, KeyValueOp, PutRequest, RangeRequest, TxnRequest,
};

use agent_supervisor_protocol::{ErrorCode, Problem};
use serde::{Deserialize, Serialize};

use crate::secret::Secret;

/// Where etcd is and how long to wait for it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Keys live under `/sorna/{namespace}/`, as in Backend.AI.
    pub namespace: String,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// Bound on every etcd request; past it the caller sees `etcd_unavailable`.
    pub timeout_ms: u64,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            namespace: "local".to_owned(),
            user: None,
            password: None,
            timeout_ms: 2_000,
        }
    }
}

/// Failures of the etcd layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd is unavailable: {0}")]
    Unavailable(String),
    #[error("agent {agent}: etcd key {key} is missing")]
    MissingKey { agent: String, key: String },
    #[error("agent {agent}: etcd key {key} holds {value:?}, which is not {expected}")]
    BadValue { agent: String, key: String, value: String, expected: &'static str },
}

impl From<EtcdError> for Problem {
    fn from(e: EtcdError) -> Self {
        match &e {
            EtcdError::Unavailable(_) => Problem::new(ErrorCode::EtcdUnavailable, e.to_string()),
            EtcdError::MissingKey { agent, key } => {
                Problem::new(ErrorCode::WatcherNotRegistered, e.to_string()).for_agent(agent).with("key", key.as_str())
            }
            EtcdError::BadValue { agent, key, .. } => {
                Problem::new(ErrorCode::WatcherNotRegistered, e.to_string()).for_agent(agent).with("key", key.as_str())
            }
        }
    }
}

/// A namespaced etcd client whose every request is bounded by the configured timeout.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
    timeout: Duration,
}

impl Etcd {
    /// Prepares a client. Connecting is lazy, so this succeeds while etcd is down; requests then fail with
    /// [`EtcdError::Unavailable`] within the timeout.
    pub async fn connect(cfg: &EtcdConfig) -> Result<Self, EtcdError> {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let endpoints: Vec<Endpoint> = cfg.endpoints.iter().map(|e| Endpoint::new(e.clone())).collect();
        let mut client_cfg = ClientConfig::new(endpoints).connect_timeout(timeout);
        if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
            client_cfg = client_cfg.auth(user.clone(), password.expose().to_owned());
        }
        let client = tokio::time::timeout(timeout, Client::connect(client_cfg))
            .await
            .map_err(|_| EtcdError::Unavailable(format!("no answer within {} ms while connecting", cfg.timeout_ms)))?
            .map_err(|e| EtcdError::Unavailable(e.to_string()))?;
        Ok(Self { client, prefix: keys::namespace_prefix(&cfg.namespace), timeout })
    }

    /// `/sorna/{namespace}/` + `relative`.
    pub fn full_key(&self, relative: &str) -> String {
        format!("{}{}", self.prefix, relative)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The underlying client, for what the bounded helpers do not cover (watches, leases).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs one etcd call within the timeout; failures and timeouts are [`EtcdError::Unavailable`].
    pub async fn bounded<T>(&self, what: &str, fut: impl Future<Output = etcd_rs::Result<T>>) -> Result<T, EtcdError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(EtcdError::Unavailable(format!("{what}: {e}"))),
            Err(_) => Err(EtcdError::Unavailable(format!("{what}: no answer within {} ms", self.timeout.as_millis()))),
        }
    }

    /// Reads one key (relative to the namespace).
    pub async fn get(&self, relative: &str) -> Result<Option<String>, EtcdError> {
        let key = self.full_key(relative);
        let resp = self.bounded("get", self.client.get(RangeRequest::new(KeyRange::key(key)))).await?;
        Ok(resp.kvs.first().map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    /// Reads every key under a relative prefix; returns `(relative key, value)` pairs and the store revision.
    pub async fn get_prefix(&self, relative: &str) -> Result<(Vec<(String, String)>, i64), EtcdError> {
        let key = self.full_key(relative);
        let resp = self.bounded("get prefix", self.client.get(RangeRequest::new(KeyRange::prefix(key)))).await?;
        let kvs = resp
            .kvs
            .iter()
            .filter_map(|kv| {
                let k = String::from_utf8_lossy(&kv.key);
                k.strip_prefix(&self.prefix)
                    .map(|rel| (rel.to_owned(), String::from_utf8_lossy(&kv.value).into_owned()))
            })
            .collect();
        Ok((kvs, resp.header.revision()))
    }

    pub async fn put(&self, relative: &str, value: &str) -> Result<(), EtcdError> {
        let key = self.full_key(relative);
        self.bounded("put", self.client.put(PutRequest::new(key, value.to_owned()))).await?;
        Ok(())
    }

    pub async fn delete(&self, relative: &str) -> Result<(), EtcdError> {
        let key = self.full_key(relative);
        self.bounded("delete", self.client.delete(DeleteRequest::new(KeyRange::key(key)))).await?;
        Ok(())
    }

    /// Puts and deletes keys (relative to the namespace) in one etcd transaction: all of them happen, or none.
    /// Returns the store's revision after the transaction.
    pub async fn apply(&self, puts: &[(String, String)], deletes: &[String]) -> Result<i64, EtcdError> {
        let mut txn = TxnRequest::new();
        for (key, value) in puts {
            txn = txn.and_then(PutRequest::new(self.full_key(key), value.clone()));
        }
        for key in deletes {
            txn = txn.and_then(DeleteRequest::new(KeyRange::key(self.full_key(key))));
        }
        let done = self.bounded("transaction", self.client.txn(txn)).await?;
        Ok(done.header.revision())
    }

    /// Deletes every key under a relative prefix (`""` = the whole namespace).
    pub async fn delete_prefix(&self, relative: &str) -> Result<(), EtcdError> {
        let key = self.full_key(relative);
        self.bounded("delete prefix", self.client.delete(DeleteRequest::new(KeyRange::prefix(key)))).await?;
        Ok(())
    }
}
