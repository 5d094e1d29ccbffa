//! Who is asking. Every handler that acts gets a [`Requester`] from one of the authentication extractors in
//! [`super::auth`]; its name (the verified access key) is recorded in the audit trail.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// Access key of the verified keypair.
    pub name: String,
    pub is_superadmin: bool,
}
