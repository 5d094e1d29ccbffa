//! Domain vocabulary shared by every layer: agent ids, Backend.AI's status enums, the audit trail's words, and
//! resource slots.

mod agent_id;
mod audit;
mod resource_slot;
mod status;

pub use agent_id::{AgentId, AgentIdError};
pub use audit::{EventAction, EventOutcome};
pub use resource_slot::{ResourceSlot, SlotError};
pub use status::{AgentStatus, KernelStatus, SessionStatus, SessionType, UnknownVariant};
