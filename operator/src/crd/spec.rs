//! `FlashSale.spec`: what a person asks for. Invariants the API server can check are
//! CEL rules or schema bounds here, so `kubectl apply` refuses a bad sale with a
//! message that names the field; `crate::validate` repeats what CEL cannot express.

use k8s_openapi::api::core::v1::{ResourceRequirements, SecretKeySelector};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::core::Duration;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use flashsale_core::rules::{
    ITEMS_MAX, PER_CUSTOMER_LIMIT_MAX, SKU_BYTES_MAX, SKU_PATTERN, STOCK_MAX,
};

use super::status::FlashSaleStatus;

/// Most stock nodes one sale may run (1 primary + secondaries). Bounds the StatefulSet
/// and the admin calls the operator makes per reconcile.
pub const NODES_REPLICAS_MAX: i32 = 15;
/// Longest sale name: leaves room for `-primary`, `-redis`, pod ordinals and the
/// `controller-revision-hash` label within Kubernetes' 63-character limit.
pub const NAME_LEN_MAX: usize = 40;
// The sale's name is also the node's sale name: within the node's own limit.
const _: () = assert!(NAME_LEN_MAX <= flashsale_core::rules::ID_CHARS_MAX);

/// A flash sale: items with little stock, a short window, a primary stock node that
/// sells and secondaries that hold a live copy.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "flashsale.dev",
    version = "v1alpha1",
    kind = "FlashSale",
    plural = "flashsales",
    shortname = "fsale",
    category = "all",
    namespaced,
    status = "FlashSaleStatus",
    derive = "PartialEq",
    doc = "A flash sale run by the flashsale operator: a primary stock node that sells and secondaries that hold a live copy.",
    scale(
        spec_replicas_path = ".spec.nodes.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Primary", type_ = "string", json_path = ".status.primary.pod"),
    printcolumn(name = "Epoch", type_ = "integer", json_path = ".status.epoch"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.ready"),
    printcolumn(name = "Sold", type_ = "integer", json_path = ".status.sold"),
    printcolumn(name = "Remaining", type_ = "integer", json_path = ".status.remaining"),
    printcolumn(name = "Stock", type_ = "integer", json_path = ".status.stock"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("self.metadata.name.size() <= 40")
        .message("metadata.name: at most 40 characters (room for the names of the objects the sale owns)"),
)]
#[x_kube(validation = Rule::new(
    "!has(self.replication) || !has(self.replication.mode) || self.replication.mode != 'quorum' || !has(self.nodes) || !has(self.nodes.replicas) || self.nodes.replicas >= 2",
)
.field_path(".nodes.replicas")
.message("nodes.replicas: at least 2 with replication.mode quorum (a purchase is acknowledged once it is durable on a secondary too: with none, every purchase would time out)"))]
#[serde(rename_all = "camelCase")]
pub struct FlashSaleSpec {
    /// What is on sale. SKUs are unique within the sale.
    #[schemars(length(min = 1, max = ITEMS_MAX))]
    #[x_kube(validation = Rule::new("self.all(i, self.exists_one(j, j.sku == i.sku))")
        .message("items: every sku must be unique within the sale"))]
    pub items: Vec<SaleItem>,

    /// When the sale opens and closes.
    #[serde(default)]
    pub window: SaleWindow,

    /// How long a purchase holds its stock before it must be confirmed (Go duration,
    /// e.g. `5m`); unconfirmed holds return to stock after it.
    #[serde(default = "default_reservation_ttl")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('24h')")
        .message("reservationTtl: must be between 1s and 24h"))]
    pub reservation_ttl: Duration,

    /// The stock nodes.
    #[serde(default)]
    pub nodes: NodesSpec,

    /// The Redis that carries replication (pub/sub only; nothing is stored in it).
    #[serde(default)]
    pub redis: RedisSpec,

    /// When a purchase is acknowledged relative to the disk.
    #[serde(default)]
    pub durability: DurabilitySpec,

    /// How secondaries follow the primary, and when one counts as behind.
    #[serde(default)]
    pub replication: ReplicationSpec,

    /// When the operator replaces a primary that cannot sell, and the selling lease that
    /// fences it. A manual switchover: annotate the sale with
    /// `flashsale.dev/switchover-to: <pod>`.
    #[serde(default)]
    pub failover: FailoverSpec,

    /// The operator's autoscaler (README, "Autoscaling"). Off by default; `kubectl
    /// scale`, HorizontalPodAutoscalers and KEDA work through the scale subresource
    /// either way (while an HPA targets the sale, the autoscaler stands down).
    #[serde(default)]
    pub autoscaling: AutoscalingSpec,

    /// Most purchases per second each node admits (429 with `Retry-After` above it);
    /// absent = the node's own default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub admission_rate: Option<i32>,
}

/// One item on sale.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SaleItem {
    /// Stock-keeping unit: letters, digits, `.`, `_`, `-`; starts with a letter or digit.
    #[schemars(regex(pattern = SKU_PATTERN), length(min = 1, max = SKU_BYTES_MAX))]
    pub sku: String,
    /// Units on sale. Raising it adds stock to a running sale; it can never drop below
    /// what is sold and held.
    #[schemars(range(min = 0, max = STOCK_MAX))]
    pub stock: i64,
    /// Most units one customer may buy (0 = no limit).
    #[serde(default)]
    #[schemars(range(min = 0, max = PER_CUSTOMER_LIMIT_MAX))]
    pub per_customer_limit: i64,
}

/// The sale window. Absent `startsAt` = open now; absent `endsAt` = never closes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.startsAt) || !has(self.endsAt) || self.startsAt < self.endsAt")
    .message("window: startsAt must be before endsAt")
    .field_path(".endsAt"))]
pub struct SaleWindow {
    /// Opening time, RFC 3339 (e.g. `2026-11-21T10:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts_at: Option<Time>,
    /// Closing time, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<Time>,
}

/// The stock nodes: a StatefulSet, one pod and one WAL volume each.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NodesSpec {
    /// Number of nodes, primary included (the scale subresource sets this).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 15))]
    pub replicas: i32,
    /// Stock node image; absent = the operator's default (`flashsale/stock-node:<version>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// CPU and memory for each node; absent = 250m CPU and 128Mi requested, a 512Mi
    /// memory limit. A node takes no new purchases past 90% of its memory limit (503;
    /// its orders stay served): every order is kept, about 200 bytes each, so the limit
    /// is how many orders a node can hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The WAL volume of each node. Size and class are fixed once the sale exists (a
    /// StatefulSet cannot change its volume claims); `reclaimPolicy` may change.
    #[serde(default)]
    #[x_kube(validation = Rule::new(
        "self.size == oldSelf.size && has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)"
    ).message("nodes.storage: size and storageClassName cannot change once the sale exists"))]
    pub storage: StorageSpec,
}

/// Each node's persistent volume, which holds its write-ahead log.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Size of each node's WAL volume.
    #[serde(default = "default_storage_size")]
    pub size: Quantity,
    /// StorageClass of the WAL volumes; absent = the cluster's default class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// What happens to the WAL volumes when the FlashSale is deleted: `Retain` (the
    /// default: the volumes are the record of every acknowledged sale, so they outlive
    /// the sale until a person deletes them) or `Delete`.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
}

/// Fate of the WAL volumes when the sale is deleted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReclaimPolicy {
    #[default]
    Retain,
    Delete,
}

/// Where the replication Redis comes from.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.managed != has(self.externalUrlSecretRef)")
    .message("redis: set managed: true, or managed: false with externalUrlSecretRef (not both)"))]
pub struct RedisSpec {
    /// The operator runs a Redis for this sale (a Deployment and a Service).
    #[serde(default = "default_true")]
    pub managed: bool,
    /// Image of the managed Redis; absent = `redis:7.2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// An existing Redis: a Secret key holding its URL (`redis://…`). Only with `managed: false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_url_secret_ref: Option<SecretKeySelector>,
}

/// When a purchase is acknowledged relative to the disk.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum DurabilitySpec {
    /// One fdatasync per group-committed batch before any answer (the default).
    #[default]
    Fsync,
    /// No sync before the answer: a power loss can lose acknowledged sales.
    NoSync,
}

/// Replication: the acknowledgement mode, and when a secondary counts as behind.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSpec {
    /// `async` (default): acknowledged once durable on the primary. `quorum`: also durable
    /// on one secondary, so losing the primary's volume loses nothing (needs at least 2
    /// nodes).
    #[serde(default)]
    pub mode: ReplicationMode,
    /// A secondary more than this many WAL records behind the primary is lagging
    /// (`ReplicationHealthy` False, a Warning Event); caught up again below half of it.
    #[serde(default = "default_max_lag_records")]
    #[x_kube(validation = Rule::new("self >= 0").message("replication.maxLagRecords: must be at least 0"))]
    pub max_lag_records: i64,
    /// A secondary whose oldest record not yet applied has waited this many milliseconds
    /// (on its own clock) is lagging; caught up again below half of it.
    #[serde(default = "default_max_lag_ms")]
    #[x_kube(validation = Rule::new("self >= 0").message("replication.maxLagMs: must be at least 0"))]
    pub max_lag_ms: i64,
}

/// How many copies an acknowledged purchase has.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum ReplicationMode {
    #[default]
    Async,
    Quorum,
}

/// Failover: when the operator replaces a primary that cannot sell, and the selling
/// lease that fences it. Timings and what each guarantees: README, "Failover".
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// A primary that fails its checks (pod gone or not running, node not answering or
    /// not primary at the sale's epoch, lease renewals failing) this long is replaced;
    /// one that comes back sooner (a crash the pod restarts) is given its lease again.
    #[serde(default = "default_unhealthy_after")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('10m')")
        .message("failover.unhealthyAfter: must be between 1s and 10m"))]
    pub unhealthy_after: Duration,
    /// How long the primary's selling lease lasts without a renewal (renewed every
    /// eighth of it). A fenced primary stops selling when it ends; a failover waits it
    /// out unless the old primary stepped down or its process is gone. At least 6s, so
    /// the operator's own leader hand-over never lets a lease lapse. Shortened while a
    /// sale runs, the primary keeps the longer lease already granted (a lease is never
    /// shortened), and a fence waits for that, also after the operator's leader changes
    /// (`status.leaseDurationMs` keeps the longer duration until every such lease is
    /// over); lengthened, the longer lease is granted once the status records it.
    #[serde(default = "default_lease_duration")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('6s') && duration(self) <= duration('10m')")
        .message("failover.leaseDuration: must be between 6s and 10m"))]
    pub lease_duration: Duration,
    /// When the old primary's WAL tail cannot be read (its node and its volume are
    /// gone, or its volume holds less than it was seen durable): `Required` (default)
    /// keeps the sale blocked rather than lose an acknowledged sale — in quorum mode it
    /// promotes once every secondary the failover began with has reported, since each
    /// acknowledged sale is on one of them; `AllowLoss` promotes the most advanced
    /// secondary and says, in a Warning, that sales may be lost (in quorum mode, without
    /// the secondaries that do not report).
    #[serde(default)]
    pub tail_policy: TailPolicy,
}

/// What a failover may do without the old primary's tail.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TailPolicy {
    #[default]
    Required,
    AllowLoss,
}

/// The operator's autoscaler (`crate::autoscale`; README, "Autoscaling"): a stable and
/// a panic window over the nodes' demand, a tolerance, scale-up in steps, scale-down one
/// node at a time after a stabilisation window, pre-scaling before the window opens.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
    .message("autoscaling.minReplicas: must not exceed maxReplicas")
    .field_path(".minReplicas"))]
#[x_kube(validation = Rule::new("duration(self.panicWindow) < duration(self.stableWindow)")
    .message("autoscaling.panicWindow: must be shorter than stableWindow")
    .field_path(".panicWindow"))]
#[x_kube(validation = Rule::new("!has(self.preScaleReplicas) || (self.preScaleReplicas >= self.minReplicas && self.preScaleReplicas <= self.maxReplicas)")
    .message("autoscaling.preScaleReplicas: must be between minReplicas and maxReplicas")
    .field_path(".preScaleReplicas"))]
pub struct AutoscalingSpec {
    /// Let the operator scale the sale's nodes from their load.
    #[serde(default)]
    pub enabled: bool,
    /// Fewest nodes, primary included.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = 15))]
    pub min_replicas: i32,
    /// Most nodes, primary included.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 15))]
    pub max_replicas: i32,
    /// Public requests per second per node the scaler aims for (purchases, reads,
    /// confirms: what the nodes answer on `/v1`).
    #[serde(default = "default_target_purchases_per_s")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub target_purchases_per_s: i32,
    /// Demand is averaged over this window for the stable decision; it is also how long
    /// a panic lasts after its last cause.
    #[serde(default = "default_stable_window")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('6s') && duration(self) <= duration('10m')")
        .message("autoscaling.stableWindow: must be between 6s and 10m"))]
    pub stable_window: Duration,
    /// The short window: panic when demand over it reaches `panicThresholdPercent` of
    /// the ready nodes' capacity.
    #[serde(default = "default_panic_window")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1s') && duration(self) <= duration('1m')")
        .message("autoscaling.panicWindow: must be between 1s and 1m"))]
    pub panic_window: Duration,
    /// Demand over the panic window, in percent of the ready capacity, that starts a
    /// panic (never scale down; scale up from the short window).
    #[serde(default = "default_panic_threshold")]
    #[schemars(range(min = 110, max = 1000))]
    pub panic_threshold_percent: i32,
    /// No change while demand is within this percentage of the current capacity.
    #[serde(default = "default_tolerance")]
    #[schemars(range(min = 0, max = 50))]
    pub tolerance_percent: i32,
    /// The most nodes one scale-up adds.
    #[serde(default = "default_scale_up_step")]
    #[schemars(range(min = 1, max = 15))]
    pub scale_up_step_max: i32,
    /// A scale-down (one node) waits until no decision in this window asked for more.
    #[serde(default = "default_stable_window")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s') && duration(self) <= duration('1h')")
        .message("autoscaling.scaleDownStabilization: must be between 0s and 1h"))]
    pub scale_down_stabilization: Duration,
    /// How long before `window.startsAt` to pre-scale (a crowd arrives as a step at the
    /// open; reaction alone cannot beat a step).
    #[serde(default = "default_prescale_lead")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('0s') && duration(self) <= duration('24h')")
        .message("autoscaling.preScaleLead: must be between 0s and 24h"))]
    pub pre_scale_lead: Duration,
    /// Nodes to run from `preScaleLead` before the open (default `maxReplicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 15))]
    pub pre_scale_replicas: Option<i32>,
}

fn default_true() -> bool {
    true
}
fn default_replicas() -> i32 {
    3
}
fn default_reservation_ttl() -> Duration {
    std::time::Duration::from_secs(300).into()
}
fn default_storage_size() -> Quantity {
    Quantity("1Gi".into())
}
fn default_unhealthy_after() -> Duration {
    std::time::Duration::from_secs(4).into()
}
fn default_lease_duration() -> Duration {
    std::time::Duration::from_secs(6).into()
}
fn default_max_lag_records() -> i64 {
    1000
}
fn default_max_lag_ms() -> i64 {
    5000
}
fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    5
}
fn default_target_purchases_per_s() -> i32 {
    2000
}
fn default_stable_window() -> Duration {
    std::time::Duration::from_secs(30).into()
}
fn default_panic_window() -> Duration {
    std::time::Duration::from_secs(3).into()
}
fn default_panic_threshold() -> i32 {
    200
}
fn default_tolerance() -> i32 {
    10
}
fn default_scale_up_step() -> i32 {
    4
}
fn default_prescale_lead() -> Duration {
    std::time::Duration::from_secs(60).into()
}

impl Default for NodesSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            image: None,
            resources: None,
            storage: StorageSpec::default(),
        }
    }
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            size: default_storage_size(),
            storage_class_name: None,
            reclaim_policy: ReclaimPolicy::default(),
        }
    }
}

impl Default for RedisSpec {
    fn default() -> Self {
        Self {
            managed: true,
            image: None,
            external_url_secret_ref: None,
        }
    }
}

impl Default for ReplicationSpec {
    fn default() -> Self {
        Self {
            mode: ReplicationMode::default(),
            max_lag_records: default_max_lag_records(),
            max_lag_ms: default_max_lag_ms(),
        }
    }
}

impl Default for FailoverSpec {
    fn default() -> Self {
        Self {
            unhealthy_after: default_unhealthy_after(),
            lease_duration: default_lease_duration(),
            tail_policy: TailPolicy::default(),
        }
    }
}

impl Default for AutoscalingSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            target_purchases_per_s: default_target_purchases_per_s(),
            stable_window: default_stable_window(),
            panic_window: default_panic_window(),
            panic_threshold_percent: default_panic_threshold(),
            tolerance_percent: default_tolerance(),
            scale_up_step_max: default_scale_up_step(),
            scale_down_stabilization: default_stable_window(),
            pre_scale_lead: default_prescale_lead(),
            pre_scale_replicas: None,
        }
    }
}
