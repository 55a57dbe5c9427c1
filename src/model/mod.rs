//! Desired state: documents, kinds, and their validation.
//!
//! `load` turns the files of a source snapshot into a validated
//! [`DesiredState`], or into every diagnostic found across all files. It is
//! pure (no I/O beyond the texts it is given) and never returns a partially
//! valid state: one invalid document means nothing may be applied.

/// `as_str` and `parse` of a closed set of words, from its strum derives:
/// the one text form of each word, the same as its YAML and JSON form.
macro_rules! words {
    ($($t:ty),* $(,)?) => {$(
        impl $t {
            pub fn as_str(self) -> &'static str {
                self.into()
            }

            pub fn parse(s: &str) -> Option<$t> {
                s.parse().ok()
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
pub(crate) use words;

pub mod changes;
pub mod diagnostic;
pub mod edit;
pub mod health;
pub mod schema;
pub mod yaml;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use diagnostic::{Diagnostic, SourceTexts};
use yaml::{Node, Pos};

/// The closed set of document kinds tend understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Settings = 0,
    HostFile = 1,
    HostProcess = 2,
    Signature = 3,
    Runbook = 4,
    AwsSecurityGroup = 5,
    AwsBucket = 6,
    AwsInstance = 7,
    // Before the groups that launch from them: a plan applies in kind order.
    AwsLaunchTemplate = 8,
    AwsAutoScalingGroup = 9,
    /// A human's approval of one pending change, merged through a pull
    /// request.
    Approval = 10,
}

impl Kind {
    pub const ALL: [Kind; 11] = [
        Kind::Settings,
        Kind::HostFile,
        Kind::HostProcess,
        Kind::Signature,
        Kind::Runbook,
        Kind::AwsSecurityGroup,
        Kind::AwsBucket,
        Kind::AwsInstance,
        Kind::AwsLaunchTemplate,
        Kind::AwsAutoScalingGroup,
        Kind::Approval,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Settings => "Settings",
            Kind::HostFile => "host.File",
            Kind::HostProcess => "host.Process",
            Kind::Signature => "Signature",
            Kind::Runbook => "Runbook",
            Kind::AwsSecurityGroup => "aws.ec2.SecurityGroup",
            Kind::AwsBucket => "aws.s3.Bucket",
            Kind::AwsInstance => "aws.ec2.Instance",
            Kind::AwsLaunchTemplate => "aws.ec2.LaunchTemplate",
            Kind::AwsAutoScalingGroup => "aws.autoscaling.Group",
            Kind::Approval => "Approval",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The provider that manages resources of this kind; `None` for tend's
    /// own kinds.
    /// Whether a fleet shares resources of this kind (a cloud resource)
    /// rather than each node owning its own (a `host.*` resource).
    pub fn shared_by_fleet(self) -> bool {
        self.provider() != Some(ProviderName::Host)
    }

    pub fn provider(self) -> Option<ProviderName> {
        match self {
            Kind::Settings | Kind::Signature | Kind::Runbook | Kind::Approval => None,
            Kind::HostFile | Kind::HostProcess => Some(ProviderName::Host),
            Kind::AwsSecurityGroup
            | Kind::AwsBucket
            | Kind::AwsInstance
            | Kind::AwsLaunchTemplate
            | Kind::AwsAutoScalingGroup => Some(ProviderName::Aws),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Kind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Kind::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown kind `{s}`")))
    }
}

/// The built-in providers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderName {
    Host,
    Aws,
}

impl ProviderName {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderName::Host => "host",
            ProviderName::Aws => "aws",
        }
    }
}

/// A resource's identity: its kind and its name, unique per kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceKey {
    pub kind: Kind,
    pub name: String,
}

impl ResourceKey {
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        ResourceKey {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// How far tend may go, ordered: `Observe < Recommend < Auto`.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    strum::IntoStaticStr,
    strum::EnumString,
)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Mode {
    Observe,
    Recommend,
    Auto,
}

words!(Mode);

/// Where a document was declared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// Shared by every document of the file.
    pub file: Arc<str>,
    pub line: u32,
    pub col: u32,
}

/// One declared resource, validated.
#[derive(Debug, Clone)]
pub struct Resource {
    pub key: ResourceKey,
    pub labels: Vec<(String, String)>,
    pub mode: Option<Mode>,
    pub spec: Value,
    pub ignore: Vec<String>,
    pub origin: Origin,
    /// Probes and SLOs (`health`), boxed: most resources declare none.
    pub health: Option<Box<health::Health>>,
    pub remediation: Option<health::Remediation>,
    /// Overrides of `Settings spec.changes` for this resource.
    pub changes: Option<changes::ResourceChanges>,
}

/// The repository-wide settings (kind `Settings`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Settings {
    #[serde(default = "default_providers")]
    pub providers: Vec<ProviderName>,
    #[serde(default = "default_mode")]
    pub mode: Mode,
    #[serde(default)]
    pub state_dir: Option<String>,
    /// A shared state database for a fleet of watchers.
    #[serde(default)]
    pub state: Option<SharedState>,
    #[serde(default)]
    pub prune: Prune,
    #[serde(default)]
    pub host: HostSettings,
    #[serde(default)]
    pub safety: Safety,
    #[serde(default)]
    pub maintenance_windows: Vec<MaintenanceWindow>,
    /// No automatic action on what they select while open, maintenance
    /// window or not, except a change a break-glass `Approval` names.
    #[serde(default)]
    pub freeze_windows: Vec<FreezeWindow>,
    #[serde(default)]
    pub policies: PolicySettings,
    #[serde(default)]
    pub healing: health::Healing,
    #[serde(default)]
    pub aws: AwsSettings,
    #[serde(default)]
    pub review: ReviewSettings,
    #[serde(default)]
    pub changes: changes::Changes,
    #[serde(default)]
    pub notify: Option<Notify>,
}

/// `Settings spec.notify`: reaching on-call. Incident state changes that
/// matter go to Alertmanager (as alerts tend owns; its routing, grouping,
/// inhibition and silences decide who is paged) and to a signed
/// CloudEvents webhook. Secrets only from the environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Notify {
    #[serde(default)]
    pub alertmanager: Option<AlertmanagerTarget>,
    #[serde(default)]
    pub webhook: Option<WebhookTarget>,
    /// The same event about the same resource and cause is not sent again
    /// within this long.
    #[serde(default = "default_min_interval")]
    pub min_interval: Span,
    #[serde(default)]
    pub on: NotifyOn,
    /// The `node` label; default: the host name.
    #[serde(default)]
    pub node: Option<String>,
}

fn default_min_interval() -> Span {
    Span(std::time::Duration::from_secs(600))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AlertmanagerTarget {
    /// Alertmanager's base URL; tend posts to `<url>/api/v2/alerts`.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookTarget {
    pub url: String,
    /// The environment variable holding the signing secret.
    #[serde(default = "default_webhook_secret_env")]
    pub secret_env: String,
}

fn default_webhook_secret_env() -> String {
    "TEND_WEBHOOK_SECRET".into()
}

/// Which incidents are sent: by severity and by event (`opened`,
/// `escalated`, `resolved`, `held`); empty lists send all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifyOn {
    #[serde(default)]
    pub severities: Vec<health::Severity>,
    #[serde(default)]
    pub events: Vec<String>,
}

/// `Settings spec.review`: where changes that need a human are proposed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReviewSettings {
    #[serde(default)]
    pub github: Option<GithubReview>,
}

impl ReviewSettings {
    /// The longest an approval may stay valid: `approvalTtl`, or its
    /// default when pull requests are off.
    pub fn approval_ttl(&self) -> std::time::Duration {
        self.github
            .as_ref()
            .map_or(default_approval_ttl(), |g| g.approval_ttl)
            .0
    }
}

/// `Settings spec.review.github`: pull requests for review, issues for
/// escalated incidents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GithubReview {
    /// `owner/name` of the desired-state repository.
    pub repository: String,
    /// Default: the repository's default branch.
    #[serde(default)]
    pub base_branch: Option<String>,
    #[serde(default = "default_github_api")]
    pub api_url: String,
    #[serde(default = "default_review_labels")]
    pub labels: Vec<String>,
    #[serde(default = "default_max_open")]
    pub max_open: usize,
    #[serde(default = "default_max_new_per_run")]
    pub max_new_per_run: usize,
    /// Where the desired state lives in the repository (a sub-directory;
    /// default: its root).
    #[serde(default)]
    pub path: String,
    /// How long a merged approval stays valid.
    #[serde(default = "default_approval_ttl")]
    pub approval_ttl: Span,
}

impl GithubReview {
    /// `(owner, name)` of the repository.
    pub fn owner_repo(&self) -> (&str, &str) {
        self.repository
            .split_once('/')
            .unwrap_or((&self.repository, ""))
    }
}

fn default_github_api() -> String {
    "https://api.github.com".into()
}

fn default_review_labels() -> Vec<String> {
    vec!["tend".into()]
}

fn default_max_open() -> usize {
    10
}

fn default_max_new_per_run() -> usize {
    2
}

fn default_approval_ttl() -> Span {
    Span(std::time::Duration::from_secs(7 * 24 * 3600))
}

/// A merged approval (kind `Approval`): a human allowed the pending change
/// with this fingerprint on this resource, until it expires.
#[derive(Debug, Clone, PartialEq)]
pub struct Approval {
    pub name: String,
    pub target: ResourceKey,
    pub fingerprint: String,
    pub expires: chrono::DateTime<chrono::Utc>,
    /// It lets its change run once during a freeze window too.
    pub break_glass: bool,
    pub origin: Origin,
}

/// `Settings spec.aws`: where the `aws` provider connects.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AwsSettings {
    /// Regions to manage; resources without `spec.region` use the first.
    #[serde(default)]
    pub regions: Vec<String>,
    /// An AWS-compatible endpoint (e.g. a local test server).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// A named profile of the shared AWS config files.
    #[serde(default)]
    pub profile: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Prune {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "default_max_delete_share")]
    pub max_delete_share: f64,
}

impl Default for Prune {
    fn default() -> Self {
        Prune {
            enabled: false,
            max_delete_share: default_max_delete_share(),
        }
    }
}

fn default_max_delete_share() -> f64 {
    0.3
}

/// A duration written as text ("30s", "1h 30m").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span(pub std::time::Duration);

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Span)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration `{s}`: {e}")))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Safety {
    #[serde(default = "default_max_actions")]
    pub max_actions_per_run: usize,
    #[serde(default)]
    pub cooldown: Span,
    #[serde(default)]
    pub fight_detection: FightDetection,
    #[serde(default)]
    pub circuit_breaker: CircuitBreaker,
    #[serde(default)]
    pub storm: Storm,
    /// Fleet-wide budgets over the resources a label selector picks,
    /// counted in the state database across every member.
    #[serde(default)]
    pub fleet: Vec<FleetBudget>,
}

/// `Settings spec.safety.fleet[]`: a budget over the resources its selector
/// picks, across every member sharing the state database (one machine
/// alone is a fleet of one). No policy can loosen it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetBudget {
    pub name: String,
    #[serde(default)]
    pub selector: changes::WaveSelector,
    /// At most this many automatic actions in flight at once (a runbook
    /// step until its verification ends), a count or a share of the
    /// selected resources across the fleet.
    #[serde(default)]
    pub max_concurrent: Option<Share>,
    /// No automatic action while fewer selected resources than this are
    /// healthy across the fleet: the observer or a shared dependency is
    /// more likely broken than every host.
    #[serde(default)]
    pub min_healthy: Option<Share>,
    /// No automatic action once this many actions on selected resources
    /// failed or were not verified within `window`, fleet-wide.
    #[serde(default)]
    pub max_errors: Option<usize>,
    #[serde(default = "budget_window")]
    pub window: Span,
}

fn budget_window() -> Span {
    Span(std::time::Duration::from_secs(3600))
}

/// A number of resources (`2`) or a share of them (`"20%"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Share {
    Count(usize),
    Percent(f64),
}

impl Share {
    /// How many of `total` this is: a share rounded up.
    pub fn of(&self, total: usize) -> usize {
        match *self {
            Share::Count(n) => n,
            Share::Percent(p) => (p * total as f64 / 100.0 - 1e-9).ceil().max(0.0) as usize,
        }
    }
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Share::Count(n) => write!(f, "{n}"),
            Share::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Share {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Share::Count(n) => s.serialize_u64(*n as u64),
            Share::Percent(_) => s.serialize_str(&self.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Count(u64),
            Text(String),
        }
        let bad = |s: &str| {
            serde::de::Error::custom(format!(
                "invalid share `{s}`: a count (2) or a percentage between 0% and 100% (\"20%\")"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::Count(n) => Ok(Share::Count(n as usize)),
            Raw::Text(t) => {
                let p: f64 = t
                    .strip_suffix('%')
                    .and_then(|n| n.trim().parse().ok())
                    .ok_or_else(|| bad(&t))?;
                if !(0.0..=100.0).contains(&p) {
                    return Err(bad(&t));
                }
                Ok(Share::Percent(p))
            }
        }
    }
}

/// `Settings spec.safety.storm`: when at least `share` (and at least
/// `minResources`) of the watched resources that read one signal source
/// turn unhealthy within `window` of each other, the source or a shared
/// dependency is more likely broken than every resource: no automatic
/// healing action on them, and one incident names the source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Storm {
    #[serde(default = "storm_on")]
    pub enabled: bool,
    #[serde(default = "storm_share")]
    pub share: f64,
    #[serde(default = "storm_min")]
    pub min_resources: usize,
    #[serde(default = "storm_window")]
    pub window: Span,
}

fn storm_on() -> bool {
    true
}

fn storm_share() -> f64 {
    0.5
}

fn storm_min() -> usize {
    3
}

fn storm_window() -> Span {
    Span(std::time::Duration::from_secs(60))
}

impl Default for Storm {
    fn default() -> Self {
        Storm {
            enabled: storm_on(),
            share: storm_share(),
            min_resources: storm_min(),
            window: storm_window(),
        }
    }
}

fn default_max_actions() -> usize {
    25
}

impl Default for Safety {
    fn default() -> Self {
        Safety {
            max_actions_per_run: default_max_actions(),
            cooldown: Span::default(),
            fight_detection: FightDetection::default(),
            circuit_breaker: CircuitBreaker::default(),
            storm: Storm::default(),
            fleet: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FightDetection {
    #[serde(default = "default_corrections")]
    pub corrections: usize,
    #[serde(default = "default_fight_window")]
    pub window: Span,
}

fn default_corrections() -> usize {
    3
}

fn default_fight_window() -> Span {
    Span(std::time::Duration::from_secs(3600))
}

impl Default for FightDetection {
    fn default() -> Self {
        FightDetection {
            corrections: default_corrections(),
            window: default_fight_window(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    #[serde(default = "default_failures")]
    pub failures: usize,
    #[serde(default = "default_breaker_window")]
    pub window: Span,
}

fn default_failures() -> usize {
    3
}

fn default_breaker_window() -> Span {
    Span(std::time::Duration::from_secs(600))
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        CircuitBreaker {
            failures: default_failures(),
            window: default_breaker_window(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MaintenanceWindow {
    pub name: String,
    pub days: Vec<String>,
    pub start: String,
    pub end: String,
    #[serde(default)]
    pub time_zone: Option<String>,
}

/// A freeze window: the schedule of a maintenance window, over the
/// resources whose labels its selector names (every resource without one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FreezeWindow {
    pub name: String,
    pub days: Vec<String>,
    pub start: String,
    pub end: String,
    #[serde(default)]
    pub time_zone: Option<String>,
    #[serde(default)]
    pub selector: changes::WaveSelector,
}

impl FreezeWindow {
    /// Its schedule.
    pub fn schedule(&self) -> MaintenanceWindow {
        MaintenanceWindow {
            name: self.name.clone(),
            days: self.days.clone(),
            start: self.start.clone(),
            end: self.end.clone(),
            time_zone: self.time_zone.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySettings {
    #[serde(default)]
    pub dirs: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostSettings {
    #[serde(default)]
    pub root: Option<String>,
}

/// `Settings spec.state`: the PostgreSQL database a fleet of watchers
/// shares. The password never comes from Git: `TEND_STATE_PASSWORD`, or
/// the file `passwordFile` names on each member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SharedState {
    /// `postgres://USER@HOST:PORT/DATABASE`, without a password (also
    /// `--state` or TEND_STATE_URL, which take precedence).
    #[serde(default)]
    pub url: Option<String>,
    /// A file holding the password, on the member's own disk.
    #[serde(default)]
    pub password_file: Option<String>,
    /// How long a member's lease on a shared resource lasts unless
    /// renewed: a dead member's resources are taken over after it.
    #[serde(default = "default_lease")]
    pub lease: Span,
}

fn default_lease() -> Span {
    Span(std::time::Duration::from_secs(15))
}

impl Settings {
    /// How long a lease on a shared resource lasts (`spec.state.lease`).
    pub fn lease(&self) -> std::time::Duration {
        self.state
            .as_ref()
            .map_or_else(|| default_lease().0, |s| s.lease.0)
    }
}

fn default_providers() -> Vec<ProviderName> {
    vec![ProviderName::Host]
}

fn default_mode() -> Mode {
    Mode::Auto
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            providers: default_providers(),
            mode: default_mode(),
            state_dir: None,
            state: None,
            prune: Prune::default(),
            host: HostSettings::default(),
            safety: Safety::default(),
            maintenance_windows: Vec::new(),
            freeze_windows: Vec::new(),
            policies: PolicySettings::default(),
            healing: health::Healing::default(),
            aws: AwsSettings::default(),
            review: ReviewSettings::default(),
            changes: changes::Changes::default(),
            notify: None,
        }
    }
}

/// A validated desired state: settings and resources keyed by identity.
#[derive(Debug, Clone, Default)]
pub struct DesiredState {
    pub settings: Settings,
    pub resources: Vec<Resource>,
    pub signatures: Vec<health::Signature>,
    pub runbooks: Vec<health::Runbook>,
    pub approvals: Vec<Approval>,
    pub documents: usize,
    pub files: usize,
}

impl DesiredState {
    pub fn index(&self) -> HashMap<&ResourceKey, &Resource> {
        self.resources.iter().map(|r| (&r.key, r)).collect()
    }
}

/// One file to load: its display path (relative to the source root) and text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: String,
    pub text: String,
}

/// A file the source found but did not hand over as text (not UTF-8, too
/// large, a symbolic link out of the tree, not a regular file). It is
/// reported with every other diagnostic of the pass, so one bad file never
/// hides the problems of the others.
#[derive(Debug, Clone)]
pub struct Refused {
    pub diagnostic: Diagnostic,
    /// The text to quote from, when some of it could be shown.
    pub text: Option<String>,
}

/// The files of a source and the ones it refused: what [`load`] reads.
#[derive(Debug, Clone, Default)]
pub struct SourceFiles {
    pub files: Vec<SourceFile>,
    pub refused: Vec<Refused>,
    /// What every file's path starts with: the source's root as shown
    /// (`desired/`, or the `--path` of a Git source with a slash).
    pub root: String,
}

impl std::ops::Deref for SourceFiles {
    type Target = [SourceFile];

    fn deref(&self) -> &[SourceFile] {
        &self.files
    }
}

/// Anything [`load`] can read: plain files, or a source's files with the
/// ones it refused.
pub trait Inputs {
    fn files(&self) -> &[SourceFile];
    fn refused(&self) -> &[Refused] {
        &[]
    }
    /// What every file's path starts with (see [`SourceFiles::root`]).
    fn root(&self) -> &str {
        ""
    }
}

impl Inputs for [SourceFile] {
    fn files(&self) -> &[SourceFile] {
        self
    }
}

impl<const N: usize> Inputs for [SourceFile; N] {
    fn files(&self) -> &[SourceFile] {
        self
    }
}

impl Inputs for Vec<SourceFile> {
    fn files(&self) -> &[SourceFile] {
        self
    }
}

impl Inputs for SourceFiles {
    fn files(&self) -> &[SourceFile] {
        &self.files
    }
    fn refused(&self) -> &[Refused] {
        &self.refused
    }
    fn root(&self) -> &str {
        &self.root
    }
}

/// Everything wrong with a desired state, and the texts to quote from.
#[derive(Debug)]
pub struct Invalid {
    pub diagnostics: Vec<Diagnostic>,
    pub sources: SourceTexts,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.diagnostics.len();
        write!(
            f,
            "desired state is invalid: {n} error{}",
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for Invalid {}

/// Loads and validates every document in `input`, and reports the files
/// its source refused.
pub fn load<I: Inputs + ?Sized>(input: &I) -> Result<DesiredState, Invalid> {
    let files = input.files();
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let chunk = files.len().div_ceil(threads).max(1);
    let per_file: Vec<FileResult> = if files.len() <= 1 {
        files.iter().map(check_file).collect()
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = files
                .chunks(chunk)
                .map(|part| s.spawn(move || part.iter().map(check_file).collect::<Vec<_>>()))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    };

    let mut diagnostics: Vec<Diagnostic> = input
        .refused()
        .iter()
        .map(|r| r.diagnostic.clone())
        .collect();
    let mut documents = 0;
    let mut settings_docs: Vec<(Value, Origin)> = Vec::new();
    let mut resources = Vec::with_capacity(per_file.iter().map(|f| f.resources.len()).sum());
    for f in per_file {
        documents += f.count;
        resources.extend(f.resources);
        settings_docs.extend(f.settings);
        diagnostics.extend(f.diags);
    }

    let pos_of = |o: &Origin| Pos::new(o.line, o.col, 1);
    for pair in settings_docs.windows(2) {
        diagnostics.push(
            Diagnostic::new(
                &*pair[1].1.file,
                Some(pos_of(&pair[1].1)),
                "a repository has at most one Settings document",
            )
            .with_note(
                &*pair[0].1.file,
                pos_of(&pair[0].1),
                "the first Settings is here",
            ),
        );
    }
    duplicates(files, &resources, &mut diagnostics);

    if !diagnostics.is_empty() {
        diagnostics.sort_by(|a, b| {
            (a.file.as_str(), a.pos.map(|p| (p.line, p.col)))
                .cmp(&(b.file.as_str(), b.pos.map(|p| (p.line, p.col))))
        });
        let sources = quoted_sources(files, input.refused(), &diagnostics);
        return Err(Invalid {
            diagnostics,
            sources,
        });
    }

    let settings = match settings_docs.pop() {
        None => Settings::default(),
        Some((spec, origin)) => {
            let invalid = |msg: String| {
                let mut sources = SourceTexts::default();
                if let Some(f) = files.iter().find(|f| *f.path == *origin.file) {
                    sources.insert(&f.path, &f.text);
                }
                Invalid {
                    diagnostics: vec![Diagnostic::new(&*origin.file, Some(pos_of(&origin)), msg)],
                    sources,
                }
            };
            let settings: Settings = serde_json::from_value(spec)
                .map_err(|e| invalid(format!("invalid Settings: {e}")))?;
            for w in &settings.maintenance_windows {
                if let Some(tz) = &w.time_zone {
                    if tz.parse::<chrono_tz::Tz>().is_err() {
                        return Err(invalid(format!(
                            "invalid Settings: maintenance window `{}` has an unknown time zone `{tz}` (use an IANA name such as Europe/Berlin)",
                            w.name
                        )));
                    }
                }
            }
            let mut names = std::collections::HashSet::new();
            for b in &settings.safety.fleet {
                if !names.insert(b.name.as_str()) {
                    return Err(invalid(format!(
                        "invalid Settings: two fleet budgets are named `{}` (spec.safety.fleet)",
                        b.name
                    )));
                }
                if b.max_concurrent.is_none() && b.min_healthy.is_none() && b.max_errors.is_none() {
                    return Err(invalid(format!(
                        "invalid Settings: fleet budget `{}` sets none of maxConcurrent, minHealthy, maxErrors (spec.safety.fleet)",
                        b.name
                    )));
                }
                if b.max_concurrent == Some(Share::Count(0)) {
                    return Err(invalid(format!(
                        "invalid Settings: fleet budget `{}` has maxConcurrent 0, which stops every action; use a pause instead (spec.safety.fleet)",
                        b.name
                    )));
                }
            }
            settings
        }
    };
    let (resources, signatures, runbooks) = split_healing(resources, files)?;
    let (resources, approvals) = split_approvals(resources, files, input.root())?;
    let problems = health::check(&settings, &resources, &signatures, &runbooks);
    if !problems.is_empty() {
        return Err(located(files, problems));
    }
    Ok(DesiredState {
        settings,
        resources,
        signatures,
        runbooks,
        approvals,
        documents,
        files: files.len(),
    })
}

type Split = (Vec<Resource>, Vec<health::Signature>, Vec<health::Runbook>);

/// Takes the `Signature` and `Runbook` documents out of the resources and
/// types them.
fn split_healing(resources: Vec<Resource>, files: &[SourceFile]) -> Result<Split, Invalid> {
    if !resources
        .iter()
        .any(|r| matches!(r.key.kind, Kind::Signature | Kind::Runbook))
    {
        return Ok((resources, Vec::new(), Vec::new()));
    }
    let mut kept = Vec::with_capacity(resources.len());
    let (mut signatures, mut runbooks, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    for r in resources {
        let spec = r.spec.clone();
        let fail = |e: String| health::Problem {
            origin: r.origin.clone(),
            pointer: "/spec".into(),
            message: format!("invalid {}: {e}", r.key.kind),
            help: None,
        };
        match r.key.kind {
            Kind::Signature => match health::typed(spec) {
                Ok(spec) => signatures.push(health::Signature {
                    name: r.key.name,
                    spec,
                    origin: r.origin,
                }),
                Err(e) => problems.push(fail(e)),
            },
            Kind::Runbook => match health::typed(spec) {
                Ok(spec) => runbooks.push(health::Runbook {
                    name: r.key.name,
                    spec,
                    origin: r.origin,
                }),
                Err(e) => problems.push(fail(e)),
            },
            _ => kept.push(r),
        }
    }
    if !problems.is_empty() {
        return Err(located(files, problems));
    }
    signatures.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((kept, signatures, runbooks))
}

/// Takes the `Approval` documents out of the resources and types them: the
/// target must be a kind tend manages, the expiry an RFC 3339 time, and the
/// document the file `approvals/<kind>/<name>.yaml` under the source's root.
fn split_approvals(
    resources: Vec<Resource>,
    files: &[SourceFile],
    root: &str,
) -> Result<(Vec<Resource>, Vec<Approval>), Invalid> {
    if !resources.iter().any(|r| r.key.kind == Kind::Approval) {
        return Ok((resources, Vec::new()));
    }
    let (mut kept, mut approvals, mut problems) = (Vec::new(), Vec::new(), Vec::new());
    for r in resources {
        if r.key.kind != Kind::Approval {
            kept.push(r);
            continue;
        }
        let problem = |pointer: &str, message: String| health::Problem {
            origin: r.origin.clone(),
            pointer: pointer.into(),
            message,
            help: None,
        };
        let text = |p: &str| r.spec.pointer(p).and_then(Value::as_str).unwrap_or("");
        let kind = match Kind::parse(text("/target/kind")) {
            Some(k) if k.provider().is_some() => k,
            _ => {
                problems.push(problem(
                    "/spec/target/kind",
                    format!(
                        "invalid Approval: `{}` is not a kind tend manages",
                        text("/target/kind")
                    ),
                ));
                continue;
            }
        };
        let expires = match chrono::DateTime::parse_from_rfc3339(text("/expires")) {
            Ok(t) => t.with_timezone(&chrono::Utc),
            Err(e) => {
                problems.push(problem(
                    "/spec/expires",
                    format!("invalid Approval: `expires` is not an RFC 3339 time: {e}"),
                ));
                continue;
            }
        };
        let target = ResourceKey::new(kind, text("/target/name"));
        // Only where CODEOWNERS and branch protection guard approvals: an
        // approval anywhere else would be merged by whoever reviews that
        // file.
        let at = format!("{root}{}", approval_path(&target));
        if *r.origin.file != at {
            problems.push(health::Problem {
                origin: r.origin.clone(),
                pointer: String::new(),
                message: format!("invalid Approval: it must be the file {at}, where approvals of {target} live"),
                help: Some("approvals are merged through the pull request tend opens; CODEOWNERS and branch protection on approvals/ decide who may approve".into()),
            });
            continue;
        }
        approvals.push(Approval {
            target,
            fingerprint: text("/fingerprint").to_string(),
            expires,
            break_glass: r
                .spec
                .pointer("/breakGlass")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            name: r.key.name,
            origin: r.origin,
        });
    }
    if !problems.is_empty() {
        return Err(located(files, problems));
    }
    Ok((kept, approvals))
}

/// Where the approval of a resource lives, relative to the desired state's
/// root.
pub fn approval_path(key: &ResourceKey) -> String {
    format!("approvals/{}/{}.yaml", key.kind, key.name)
}

/// Diagnostics for problems found after the per-document checks, each
/// located at the field it is about.
fn located(files: &[SourceFile], problems: Vec<health::Problem>) -> Invalid {
    let mut docs = Documents::new(files);
    let mut diagnostics = Vec::with_capacity(problems.len());
    for p in problems {
        let pos = docs
            .at(&p.origin)
            .and_then(|node| node.locate(&p.pointer, false))
            .unwrap_or(Pos::new(p.origin.line, p.origin.col, 1));
        let d = Diagnostic::new(&*p.origin.file, Some(pos), p.message);
        diagnostics.push(match p.help {
            Some(h) => d.with_help(h),
            None => d,
        });
    }
    let sources = quoted_sources(files, &[], &diagnostics);
    Invalid {
        diagnostics,
        sources,
    }
}

/// Reports every resource declared twice, pointing at both names.
fn duplicates(files: &[SourceFile], resources: &[Resource], diagnostics: &mut Vec<Diagnostic>) {
    let mut seen: HashMap<(Kind, &str), &Origin> = HashMap::with_capacity(resources.len());
    let mut twice: Vec<(&Resource, &Origin)> = Vec::new();
    for r in resources {
        match seen.entry((r.key.kind, r.key.name.as_str())) {
            std::collections::hash_map::Entry::Occupied(first) => twice.push((r, *first.get())),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(&r.origin);
            }
        }
    }
    if twice.is_empty() {
        return;
    }
    // Each file is parsed again at most once, however many names it repeats.
    let mut docs = Documents::new(files);
    let mut name_pos = |o: &Origin| {
        docs.at(o)
            .and_then(|n| n.locate("/metadata/name", false))
            .unwrap_or(Pos::new(o.line, o.col, 1))
    };
    for (r, first) in twice {
        let here = name_pos(&r.origin);
        let there = name_pos(first);
        diagnostics.push(
            Diagnostic::new(
                &*r.origin.file,
                Some(here),
                format!("{} is declared twice", r.key),
            )
            .with_note(&*first.file, there, "first declared here"),
        );
    }
}

/// The positioned documents of files, parsed on first use and at most once
/// per file, found by where each document starts.
struct Documents<'a> {
    files: HashMap<&'a str, &'a SourceFile>,
    parsed: HashMap<&'a str, HashMap<(u32, u32), Node>>,
}

impl<'a> Documents<'a> {
    fn new(files: &'a [SourceFile]) -> Self {
        Documents {
            files: files.iter().map(|f| (f.path.as_str(), f)).collect(),
            parsed: HashMap::new(),
        }
    }

    fn at(&mut self, origin: &Origin) -> Option<&Node> {
        let (&path, &file) = self.files.get_key_value(&*origin.file)?;
        let docs = self.parsed.entry(path).or_insert_with(|| {
            yaml::parse_documents(&file.text)
                .unwrap_or_default()
                .into_iter()
                .map(|n| ((n.pos.line, n.pos.col), n))
                .collect()
        });
        docs.get(&(origin.line, origin.col))
    }
}

/// The texts the diagnostics quote from: the files they name, and what
/// could be shown of refused ones.
fn quoted_sources(files: &[SourceFile], refused: &[Refused], diags: &[Diagnostic]) -> SourceTexts {
    let named: std::collections::HashSet<&str> = diags
        .iter()
        .flat_map(|d| {
            std::iter::once(d.file.as_str()).chain(d.notes.iter().map(|n| n.file.as_str()))
        })
        .collect();
    let mut sources = SourceTexts::default();
    for f in files {
        if named.contains(f.path.as_str()) {
            sources.insert(&f.path, &f.text);
        }
    }
    for r in refused {
        if let Some(text) = &r.text {
            sources.insert(&r.diagnostic.file, text);
        }
    }
    sources
}

fn into_resource(kind: Kind, name: String, doc: Value, origin: Origin) -> Result<Resource, String> {
    // Schema validation guarantees an object; anything else yields an
    // empty document rather than a panic path.
    let mut doc = match doc {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    let metadata = doc.remove("metadata").unwrap_or(Value::Null);
    let labels = metadata
        .get("labels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let mode = metadata
        .get("mode")
        .and_then(|m| serde_json::from_value(m.clone()).ok());
    let ignore = match doc.remove("ignore") {
        Some(Value::Array(a)) => a
            .into_iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let health = match doc.remove("health") {
        Some(h) => Some(Box::new(health::typed(h)?)),
        None => None,
    };
    let remediation = match doc.remove("remediation") {
        Some(r) => Some(health::typed(r)?),
        None => None,
    };
    let changes = match doc.remove("changes") {
        Some(c) => Some(health::typed(c)?),
        None => None,
    };
    Ok(Resource {
        key: ResourceKey::new(kind, name),
        labels,
        mode,
        spec: doc.remove("spec").unwrap_or(Value::Null),
        ignore,
        origin,
        health,
        remediation,
        changes,
    })
}

#[derive(Default)]
struct FileResult {
    resources: Vec<Resource>,
    settings: Vec<(Value, Origin)>,
    diags: Vec<Diagnostic>,
    count: usize,
}

impl FileResult {
    fn push(&mut self, checked: Checked) {
        match checked {
            Checked::Resource(r) => self.resources.push(r),
            Checked::Settings(spec, origin) => self.settings.push((spec, origin)),
        }
    }
}

/// A document that passed every per-document check.
enum Checked {
    Resource(Resource),
    Settings(Value, Origin),
}

/// Validates one file. The fast path parses straight to JSON; only a file
/// with an error is parsed again with positions for every node, so valid
/// repositories pay nothing for precise diagnostics.
fn check_file(file: &SourceFile) -> FileResult {
    let values = match yaml::parse_values(&file.text) {
        Ok(v) => v,
        // The positioned parser reads what JSON cannot hold directly (a null
        // or numeric key) and words its errors for the user.
        Err(_) => return check_file_precisely(file),
    };
    let path: Arc<str> = Arc::from(file.path.as_str());
    let mut out = FileResult {
        count: values.len(),
        ..FileResult::default()
    };
    out.resources.reserve(values.len());
    for (doc, pos) in values {
        match accept(&path, doc, pos) {
            Some(c) => out.push(c),
            None => return check_file_precisely(file),
        }
    }
    out
}

fn yaml_failure(file: &SourceFile, e: yaml::YamlError) -> FileResult {
    FileResult {
        diags: vec![Diagnostic::new(
            &file.path,
            e.pos,
            format!("invalid YAML: {}", e.message),
        )],
        ..FileResult::default()
    }
}

/// The fast check of one document: `None` when anything is wrong.
fn accept(path: &Arc<str>, mut doc: Value, pos: Pos) -> Option<Checked> {
    let kind = Kind::parse(doc.get("kind")?.as_str()?)?;
    if !schema::for_kind(kind).validator.is_valid(&doc) {
        return None;
    }
    if let Some(items) = doc.get("ignore").and_then(Value::as_array) {
        if items
            .iter()
            .any(|i| i.as_str().is_none_or(|p| check_pointer(p).is_err()))
        {
            return None;
        }
    }
    let name = doc.pointer("/metadata/name")?.as_str()?.to_string();
    let origin = Origin {
        file: Arc::clone(path),
        line: pos.line,
        col: pos.col,
    };
    Some(if kind == Kind::Settings {
        let spec = doc
            .get_mut("spec")
            .map(Value::take)
            .unwrap_or(Value::Object(Default::default()));
        Checked::Settings(spec, origin)
    } else {
        Checked::Resource(into_resource(kind, name, doc, origin).ok()?)
    })
}

/// The slow path: every diagnostic of a file, located.
fn check_file_precisely(file: &SourceFile) -> FileResult {
    let nodes = match yaml::parse_documents(&file.text) {
        Ok(nodes) => nodes,
        Err(e) => return yaml_failure(file, e),
    };
    let path: Arc<str> = Arc::from(file.path.as_str());
    let mut out = FileResult {
        count: nodes.len(),
        ..FileResult::default()
    };
    for node in &nodes {
        let found = check_document(&file.path, node);
        if found.is_empty() {
            // Both paths apply the same rules; a document the fast path
            // refused is still never dropped silently.
            match accept(&path, node.to_json(), node.pos) {
                Some(c) => out.push(c),
                None => out.diags.push(Diagnostic::new(
                    &file.path,
                    Some(node.pos),
                    "document could not be validated",
                )),
            }
        }
        out.diags.extend(found);
    }
    out
}

/// Every problem of one document, located.
fn check_document(file: &str, node: &Node) -> Vec<Diagnostic> {
    let at = |pos: Option<Pos>, msg: String| Diagnostic::new(file, pos, msg);
    if !matches!(node.value, yaml::NodeValue::Map(_)) {
        return vec![at(
            Some(node.pos),
            "a document must be a mapping with apiVersion, kind, metadata and spec".into(),
        )];
    }
    let kind = match node.entry("kind") {
        None => {
            return vec![
                at(Some(node.pos), "missing required field `kind`".into()).with_help(known_kinds())
            ]
        }
        Some(entry) => match &entry.value.value {
            yaml::NodeValue::Str(s) => match Kind::parse(s) {
                Some(k) => k,
                None => {
                    return vec![at(Some(entry.value.pos), format!("unknown kind `{s}`"))
                        .with_help(known_kinds())]
                }
            },
            _ => {
                return vec![at(
                    Some(entry.value.pos),
                    "wrong type at kind: expected string".into(),
                )
                .with_help(known_kinds())]
            }
        },
    };
    let doc = node.to_json();
    let mut diags: Vec<Diagnostic> = schema::validate(kind, &doc)
        .into_iter()
        .map(|v| {
            let pos = node.locate(&v.pointer, v.at_key).or_else(|| {
                // The value is missing; point at the closest existing parent.
                let parent = v.pointer.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
                node.locate(parent, true)
            });
            let d = at(pos, v.message);
            match v.help {
                Some(h) => d.with_help(h),
                None => d,
            }
        })
        .collect();
    if let Some(items) = doc.get("ignore").and_then(Value::as_array) {
        for (i, item) in items.iter().enumerate() {
            if let Some(p) = item.as_str() {
                if let Err(why) = check_pointer(p) {
                    diags.push(
                        at(
                            node.locate(&format!("/ignore/{i}"), false),
                            format!("ignore entry `{p}` is not a valid JSON Pointer: {why}"),
                        )
                        .with_help("a JSON Pointer is empty or starts with '/', e.g. /spec/mode; escape '~' as ~0 and '/' as ~1"),
                    );
                }
            }
        }
    }
    diags
}

fn known_kinds() -> String {
    let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    format!("known kinds: {}", kinds.join(", "))
}

/// RFC 6901: empty, or '/'-separated tokens where '~' is followed by 0 or 1.
pub fn check_pointer(p: &str) -> Result<(), &'static str> {
    if p.is_empty() {
        return Ok(());
    }
    if !p.starts_with('/') {
        return Err("it must start with '/'");
    }
    let bytes = p.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'~' && !matches!(bytes.get(i + 1), Some(b'0') | Some(b'1')) {
            return Err("'~' must be followed by 0 or 1");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, text: &str) -> SourceFile {
        SourceFile {
            path: path.into(),
            text: text.into(),
        }
    }

    #[test]
    fn loads_resources_and_settings() {
        let state = load(&[file(
            "a.yaml",
            "apiVersion: tend.dev/v1\nkind: Settings\nmetadata: {name: s}\nspec: {mode: observe}\n---\napiVersion: tend.dev/v1\nkind: host.File\nmetadata: {name: f}\nspec: {path: /tmp/x, content: hi}\n",
        )])
        .unwrap();
        assert_eq!(state.settings.mode, Mode::Observe);
        assert_eq!(state.resources.len(), 1);
        assert_eq!(state.resources[0].origin.line, 6);
    }

    #[test]
    fn duplicate_names_show_both_places() {
        let doc =
            "apiVersion: tend.dev/v1\nkind: host.File\nmetadata: {name: f}\nspec: {path: /tmp/x}\n";
        let err = load(&[file("a.yaml", doc), file("b.yaml", doc)]).unwrap_err();
        assert_eq!(err.diagnostics.len(), 1);
        let d = &err.diagnostics[0];
        assert_eq!(d.location(), "b.yaml:3:18");
        assert_eq!(d.notes[0].file, "a.yaml");
    }

    #[test]
    fn pointers() {
        assert!(check_pointer("/spec/a~1b").is_ok());
        assert!(check_pointer("spec").is_err());
        assert!(check_pointer("/a~2").is_err());
    }
}
