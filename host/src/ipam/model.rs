//! The records stored as JSON values: who owns an address, and what an attachment
//! holds. Field names are camelCase so operators can read them with etcdctl.

use serde::{Deserialize, Serialize};

/// Identifies one attachment: (network, container id, ifname) — the CNI triple.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttachmentId {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
}

/// The owner written into each address key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Owner {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

impl Owner {
    pub fn id(&self) -> AttachmentId {
        AttachmentId {
            network: self.network.clone(),
            container_id: self.container_id.clone(),
            ifname: self.ifname.clone(),
        }
    }
}

/// One address of an attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpRecord {
    pub pool: String,
    /// The address with the block's prefix, as the pod gets it: `10.85.4.2/26`.
    pub address: String,
    /// The block (`10.85.4.0/26`); its first usable address is the gateway.
    pub block: String,
    pub gateway: String,
}

/// The attachment key's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachmentRecord {
    #[serde(flatten)]
    pub owner: Owner,
    pub ips: Vec<IpRecord>,
}

/// Current time for `created` fields.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
