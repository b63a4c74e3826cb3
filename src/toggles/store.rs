//! Writes to the toggle tables (SPEC §4.2–§4.4), shared by the Flipper API, the admin routes and the CLI.
//!
//! Every write runs in one transaction together with its `feature_audit` row, so the log can never
//! miss a change nor record one that did not commit. Writes to one feature are serialised by a
//! transaction-scoped advisory lock, which makes each row's `before` exactly the previous row's `after`.
//!
//! Flipper's semantics are kept (its ActiveRecord adapter): enabling the boolean gate removes every
//! other gate first, disabling it removes all gates, a percentage replaces the previous one, and any
//! enable/disable registers the feature. Values are stored as Ruby prints them.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};

use super::gates::{Gates, format_percentage, parse_percentage};

/// Flipper's gate keys as stored in `flipper_gates.key`.
pub mod gate_key {
    pub const BOOLEAN: &str = "boolean";
    pub const ACTORS: &str = "actors";
    pub const PERCENTAGE_OF_ACTORS: &str = "percentage_of_actors";
    pub const PERCENTAGE_OF_TIME: &str = "percentage_of_time";
    pub const GROUPS: &str = "groups";
    pub const EXPRESSION: &str = "expression";
}

/// Longest feature key the tables hold (`varchar(255)`).
const MAX_KEY_LEN: usize = 255;

/// One feature as stored: the raw gate values (so the Flipper API prints them exactly as Flipper
/// would, `"0"` and `null` being different answers) and the kill switch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FeatureRecord {
    /// Feature key.
    pub key: String,
    /// `boolean` gate value (`"true"` when set).
    pub boolean: Option<String>,
    /// `actors` gate: flipper ids.
    pub actors: BTreeSet<String>,
    /// `percentage_of_actors` gate value as stored, e.g. `"25"`, `"2.5"`, `"0"`.
    pub percentage_of_actors: Option<String>,
    /// `percentage_of_time` gate value as stored.
    pub percentage_of_time: Option<String>,
    /// `groups` gate: group names (kept and shown; groups need Ruby code, so they never open here).
    pub groups: BTreeSet<String>,
    /// `expression` gate as stored JSON text (shown, never evaluated here).
    pub expression: Option<String>,
    /// Kill switch (`feature_controls.paused`): off for everyone while the gates stay as they are.
    pub paused: bool,
}

impl FeatureRecord {
    fn empty(key: &str) -> Self {
        Self { key: key.to_owned(), ..Self::default() }
    }

    /// The evaluable gates (unparseable percentages count as 0, as Flipper's typecast would fail closed).
    pub fn gates(&self) -> Gates {
        let pct = |v: &Option<String>| v.as_deref().and_then(parse_percentage).unwrap_or(0.0);
        Gates {
            boolean: self.boolean.as_deref() == Some("true"),
            actors: self.actors.clone(),
            percentage_of_actors: pct(&self.percentage_of_actors),
            percentage_of_time: pct(&self.percentage_of_time),
        }
    }

    /// Whether the feature is enabled for `actor` now: never while paused, else any open gate.
    pub fn is_enabled_for(&self, actor: &str) -> bool {
        !self.paused && self.gates().is_open_for(&self.key, Some(actor), rand::random::<f64>)
    }

    /// The audit snapshot, in the format documented on `feature_audit` (the rollout report reads it):
    /// `{"boolean": bool, "actors": [ids], "percentage_of_actors": number, "percentage_of_time": number, "paused": bool}`.
    pub fn audit_snapshot(&self) -> Value {
        let gates = self.gates();
        json!({
            "boolean": gates.boolean,
            "actors": gates.actors,
            "percentage_of_actors": gates.percentage_of_actors,
            "percentage_of_time": gates.percentage_of_time,
            "paused": self.paused,
        })
    }

    fn apply_gate_row(&mut self, gate: &str, value: Option<String>) {
        match gate {
            gate_key::BOOLEAN => self.boolean = value,
            gate_key::ACTORS => self.actors.extend(value),
            gate_key::PERCENTAGE_OF_ACTORS => self.percentage_of_actors = value,
            gate_key::PERCENTAGE_OF_TIME => self.percentage_of_time = value,
            gate_key::GROUPS => self.groups.extend(value),
            gate_key::EXPRESSION => self.expression = value,
            // Gates from newer Flipper versions are kept in the table but not understood here.
            _ => {}
        }
    }
}

/// Who made a change and why; recorded on the audit row.
#[derive(Clone, Debug, Default)]
pub struct AuditContext {
    /// Admin token name, `cli:<user>`, or `rollout`.
    pub actor: String,
    /// Free-text reason (`X-Reason` header, `reason` field, or `--reason`).
    pub reason: Option<String>,
    /// The request's `x-request-id`, when made over HTTP.
    pub request_id: Option<String>,
}

/// One change to one feature.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    /// Register the feature (Flipper `add`).
    AddFeature,
    /// Remove the feature, its gates and its kill-switch row (Flipper `remove`).
    RemoveFeature,
    /// Remove every gate, keep the feature (Flipper `clear`).
    Clear,
    /// Boolean gate on; Flipper clears the other gates first.
    EnableBoolean,
    /// Boolean gate off; Flipper clears all gates.
    DisableBoolean,
    /// Percentage of actors, 0–100 (0 is Flipper's "disable").
    SetPercentageOfActors(f64),
    /// Percentage of time, 0–100.
    SetPercentageOfTime(f64),
    /// Add a flipper id to the actors gate.
    AddActor(String),
    /// Remove a flipper id from the actors gate.
    RemoveActor(String),
    /// Kill switch on: off for everyone, gates untouched.
    Pause,
    /// Kill switch off: the stored gates apply again.
    Resume,
    /// Put back the gates and kill switch an earlier audit row recorded (groups and expressions,
    /// which snapshots do not hold, are left alone).
    Restore {
        /// The state to restore.
        snapshot: GateSnapshot,
        /// The `feature_audit` row it was taken from (recorded as the value).
        audit_id: i64,
    },
}

/// A feature's evaluable state as an audit row's `before`/`after` records it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GateSnapshot {
    pub boolean: bool,
    pub actors: BTreeSet<String>,
    pub percentage_of_actors: f64,
    pub percentage_of_time: f64,
    pub paused: bool,
}

impl GateSnapshot {
    /// Reads an audit snapshot (see [`FeatureRecord::audit_snapshot`]); `None` when it is not one.
    pub fn from_audit(value: &Value) -> Option<Self> {
        let actors: Option<BTreeSet<String>> =
            value.get("actors")?.as_array()?.iter().map(|a| a.as_str().map(str::to_owned)).collect();
        Some(Self {
            boolean: value.get("boolean")?.as_bool()?,
            actors: actors?,
            percentage_of_actors: value.get("percentage_of_actors")?.as_f64()?,
            percentage_of_time: value.get("percentage_of_time")?.as_f64()?,
            paused: value.get("paused").and_then(Value::as_bool).unwrap_or(false),
        })
    }
}

impl Change {
    /// The audit `operation`.
    fn operation(&self) -> &'static str {
        match self {
            Self::AddFeature => "add_feature",
            Self::RemoveFeature => "remove_feature",
            Self::Clear => "clear",
            Self::EnableBoolean | Self::AddActor(_) => "enable",
            Self::DisableBoolean | Self::RemoveActor(_) => "disable",
            Self::SetPercentageOfActors(p) | Self::SetPercentageOfTime(p) => {
                if *p > 0.0 {
                    "enable"
                } else {
                    "disable"
                }
            }
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Restore { .. } => "restore",
        }
    }

    /// The audit `gate`.
    fn gate(&self) -> Option<&'static str> {
        match self {
            Self::EnableBoolean | Self::DisableBoolean => Some(gate_key::BOOLEAN),
            Self::AddActor(_) | Self::RemoveActor(_) => Some(gate_key::ACTORS),
            Self::SetPercentageOfActors(_) => Some(gate_key::PERCENTAGE_OF_ACTORS),
            Self::SetPercentageOfTime(_) => Some(gate_key::PERCENTAGE_OF_TIME),
            _ => None,
        }
    }

    /// The audit `value` (also the stored gate value where there is one).
    fn value(&self) -> Option<String> {
        match self {
            Self::EnableBoolean => Some("true".to_owned()),
            Self::AddActor(id) | Self::RemoveActor(id) => Some(id.clone()),
            Self::SetPercentageOfActors(p) | Self::SetPercentageOfTime(p) => Some(format_percentage(*p)),
            Self::Restore { audit_id, .. } => Some(audit_id.to_string()),
            _ => None,
        }
    }
}

/// One `feature_audit` row.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub feature_key: String,
    /// add_feature, remove_feature, clear, enable, disable, pause, resume, release_suppressed.
    pub operation: String,
    /// boolean, actors, percentage_of_actors, percentage_of_time, or null.
    pub gate: Option<String>,
    pub value: Option<String>,
    /// Gate snapshot before the change.
    #[schema(value_type = Object)]
    pub before: Value,
    /// Gate snapshot after the change.
    #[schema(value_type = Object)]
    pub after: Value,
    /// Admin token name, `cli:<user>`, or `rollout`.
    pub actor: String,
    pub reason: Option<String>,
    pub request_id: Option<String>,
}

impl AuditEntry {
    /// The change in words, e.g. `percentage_of_actors 2 → 25; paused no → yes`; `no change` when the
    /// snapshots agree (a repeated command, or an automation decision that moved no gate).
    pub fn change(&self) -> String {
        describe_change(&self.before, &self.after)
    }
}

/// `before` → `after` of two audit snapshots, one clause per setting that differs.
pub fn describe_change(before: &Value, after: &Value) -> String {
    let mut parts = Vec::new();
    for key in ["boolean", "paused"] {
        let flag = |v: &Value| v.get(key).and_then(Value::as_bool).unwrap_or(false);
        if flag(before) != flag(after) {
            let word = |b: bool| if b { "yes" } else { "no" };
            parts.push(format!("{key} {} → {}", word(flag(before)), word(flag(after))));
        }
    }
    for key in ["percentage_of_actors", "percentage_of_time"] {
        let number = |v: &Value| match v.get(key) {
            Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
            Some(Value::String(s)) => s.parse().unwrap_or(0.0),
            _ => 0.0,
        };
        if number(before) != number(after) {
            parts.push(format!("{key} {} → {}", format_percentage(number(before)), format_percentage(number(after))));
        }
    }
    let actors = |v: &Value| -> BTreeSet<String> {
        v.get("actors")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let (was, now) = (actors(before), actors(after));
    let added: Vec<String> = now.difference(&was).map(|a| format!("+{a}")).collect();
    let removed: Vec<String> = was.difference(&now).map(|a| format!("-{a}")).collect();
    if !added.is_empty() || !removed.is_empty() {
        parts.push(format!("actors {}", added.into_iter().chain(removed).collect::<Vec<_>>().join(" ")));
    }
    if parts.is_empty() { "no change".to_owned() } else { parts.join("; ") }
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Pause/resume of a feature that does not exist.
    #[error("feature not found")]
    NotFound,
    /// Blank or longer than 255 characters.
    #[error("feature name must be 1 to 255 characters")]
    InvalidName,
    /// Not a number in 0..=100.
    #[error("percentage must be a number from 0 to 100")]
    InvalidPercentage,
    /// Blank flipper id.
    #[error("flipper id must not be blank")]
    InvalidActor,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Applies `change` to `feature` and records it, in one transaction; returns the feature afterwards.
#[tracing::instrument(skip_all, fields(operation = change.operation()))]
pub async fn apply(
    pool: &PgPool,
    feature: &str,
    change: &Change,
    ctx: &AuditContext,
) -> Result<FeatureRecord, StoreError> {
    let mut tx = pool.begin().await?;
    let applied = apply_in(&mut tx, feature, change, ctx, &AuditOptions::default()).await?;
    tx.commit().await?;
    Ok(applied.after)
}

/// How [`apply_in`] and [`record_in`] label their audit row when the defaults do not fit.
#[derive(Clone, Debug, Default)]
pub struct AuditOptions<'a> {
    /// Operation recorded instead of the change's own (e.g. `rollout_advance`).
    pub operation: Option<&'a str>,
    /// Time recorded instead of the database's `now()`: the rollout evaluator runs on a clock it is
    /// given, and its stage boundaries must be the audit log's, or the report would disagree with it.
    pub at: Option<DateTime<Utc>>,
}

/// A change applied by [`apply_in`].
#[derive(Clone, Debug)]
pub struct Applied {
    pub before: FeatureRecord,
    pub after: FeatureRecord,
    /// Id of the `feature_audit` row written for it.
    pub audit_id: i64,
}

/// Applies `change` and writes its audit row inside the caller's transaction, so the caller can commit
/// its own rows (e.g. a rollout plan's new stage) atomically with the gate change.
pub async fn apply_in(
    conn: &mut PgConnection,
    feature: &str,
    change: &Change,
    ctx: &AuditContext,
    options: &AuditOptions<'_>,
) -> Result<Applied, StoreError> {
    validate(feature, change)?;
    lock_feature(conn, feature).await?;
    let (exists, before) = fetch(conn, feature).await?;
    if matches!(change, Change::Pause | Change::Resume) && !exists {
        return Err(StoreError::NotFound);
    }
    write(conn, feature, change, ctx).await?;
    let (_, after) = fetch(conn, feature).await?;
    let value = change.value();
    let row = AuditRow {
        feature,
        operation: options.operation.unwrap_or(change.operation()),
        gate: change.gate(),
        value: value.as_deref(),
        before: &before,
        after: &after,
        ctx,
        at: options.at,
    };
    let audit_id = insert_audit_row(conn, &row).await?;
    Ok(Applied { before, after, audit_id })
}

/// Records an audit row that changes nothing (`before` = `after` = the feature as it is), inside the
/// caller's transaction: how the rollout evaluator logs a decision to hold. Returns the feature and
/// the row's id.
pub async fn record_in(
    conn: &mut PgConnection,
    feature: &str,
    value: Option<&str>,
    ctx: &AuditContext,
    options: &AuditOptions<'_>,
) -> Result<(FeatureRecord, i64), StoreError> {
    lock_feature(conn, feature).await?;
    let (_, current) = fetch(conn, feature).await?;
    let row = AuditRow {
        feature,
        operation: options.operation.unwrap_or("note"),
        gate: None,
        value,
        before: &current,
        after: &current,
        ctx,
        at: options.at,
    };
    let id = insert_audit_row(conn, &row).await?;
    Ok((current, id))
}

fn validate(feature: &str, change: &Change) -> Result<(), StoreError> {
    if feature.trim().is_empty() || feature.len() > MAX_KEY_LEN {
        return Err(StoreError::InvalidName);
    }
    match change {
        Change::SetPercentageOfActors(p) | Change::SetPercentageOfTime(p)
            if !(p.is_finite() && (0.0..=100.0).contains(p)) =>
        {
            Err(StoreError::InvalidPercentage)
        }
        Change::AddActor(id) | Change::RemoveActor(id) if id.trim().is_empty() => Err(StoreError::InvalidActor),
        Change::Restore { snapshot, .. } => {
            let pct_ok = |p: f64| p.is_finite() && (0.0..=100.0).contains(&p);
            if !(pct_ok(snapshot.percentage_of_actors) && pct_ok(snapshot.percentage_of_time)) {
                Err(StoreError::InvalidPercentage)
            } else if snapshot.actors.iter().any(|a| a.trim().is_empty()) {
                Err(StoreError::InvalidActor)
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Serialises writers of one feature until the transaction ends.
pub(crate) async fn lock_feature(conn: &mut PgConnection, feature: &str) -> Result<(), sqlx::Error> {
    sqlx::query!("select pg_advisory_xact_lock(hashtextextended('ebg_toggles/' || $1, 0))", feature)
        .execute(conn)
        .await?;
    Ok(())
}

async fn write(conn: &mut PgConnection, feature: &str, change: &Change, ctx: &AuditContext) -> Result<(), sqlx::Error> {
    // Flipper's `Feature#enable`/`#disable` call `adapter.add` first: every gate write registers the feature.
    if !matches!(change, Change::RemoveFeature | Change::Clear | Change::Pause | Change::Resume) {
        sqlx::query!("insert into flipper_features (key) values ($1) on conflict (key) do nothing", feature)
            .execute(&mut *conn)
            .await?;
    }
    match change {
        Change::AddFeature => {}
        Change::RemoveFeature => {
            delete_gates(conn, feature, None).await?;
            sqlx::query!("delete from feature_controls where feature_key = $1", feature).execute(&mut *conn).await?;
            sqlx::query!("delete from flipper_features where key = $1", feature).execute(&mut *conn).await?;
        }
        Change::Clear | Change::DisableBoolean => delete_gates(conn, feature, None).await?,
        Change::EnableBoolean => {
            delete_gates(conn, feature, None).await?;
            insert_gate(conn, feature, gate_key::BOOLEAN, "true").await?;
        }
        Change::SetPercentageOfActors(p) | Change::SetPercentageOfTime(p) => {
            let key = change.gate().unwrap_or(gate_key::PERCENTAGE_OF_ACTORS);
            delete_gates(conn, feature, Some(key)).await?;
            insert_gate(conn, feature, key, &format_percentage(*p)).await?;
        }
        Change::AddActor(id) => insert_gate(conn, feature, gate_key::ACTORS, id).await?,
        Change::RemoveActor(id) => {
            sqlx::query!(
                "delete from flipper_gates where feature_key = $1 and key = $2 and value = $3",
                feature,
                gate_key::ACTORS,
                id
            )
            .execute(&mut *conn)
            .await?;
        }
        Change::Restore { snapshot, .. } => {
            for key in
                [gate_key::BOOLEAN, gate_key::ACTORS, gate_key::PERCENTAGE_OF_ACTORS, gate_key::PERCENTAGE_OF_TIME]
            {
                delete_gates(conn, feature, Some(key)).await?;
            }
            if snapshot.boolean {
                insert_gate(conn, feature, gate_key::BOOLEAN, "true").await?;
            }
            for actor in &snapshot.actors {
                insert_gate(conn, feature, gate_key::ACTORS, actor).await?;
            }
            for (key, pct) in [
                (gate_key::PERCENTAGE_OF_ACTORS, snapshot.percentage_of_actors),
                (gate_key::PERCENTAGE_OF_TIME, snapshot.percentage_of_time),
            ] {
                if pct > 0.0 {
                    insert_gate(conn, feature, key, &format_percentage(pct)).await?;
                }
            }
            set_paused(conn, feature, snapshot.paused, ctx).await?;
        }
        Change::Pause | Change::Resume => set_paused(conn, feature, matches!(change, Change::Pause), ctx).await?,
    }
    Ok(())
}

/// Sets the kill switch, recording who and why on the control row.
async fn set_paused(
    conn: &mut PgConnection,
    feature: &str,
    paused: bool,
    ctx: &AuditContext,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into feature_controls (feature_key, paused, reason, changed_by, changed_at)
         values ($1, $2, $3, $4, now())
         on conflict (feature_key) do update
         set paused = excluded.paused, reason = excluded.reason, changed_by = excluded.changed_by,
             changed_at = excluded.changed_at",
        feature,
        paused,
        ctx.reason.as_deref(),
        ctx.actor,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn delete_gates(conn: &mut PgConnection, feature: &str, key: Option<&str>) -> Result<(), sqlx::Error> {
    sqlx::query!("delete from flipper_gates where feature_key = $1 and ($2::text is null or key = $2)", feature, key)
        .execute(conn)
        .await?;
    Ok(())
}

async fn insert_gate(conn: &mut PgConnection, feature: &str, key: &str, value: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "insert into flipper_gates (feature_key, key, value) values ($1, $2, $3)
         on conflict (feature_key, key, value) do nothing",
        feature,
        key,
        value
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// One `feature_audit` row to append.
struct AuditRow<'a> {
    feature: &'a str,
    operation: &'a str,
    gate: Option<&'a str>,
    value: Option<&'a str>,
    before: &'a FeatureRecord,
    after: &'a FeatureRecord,
    ctx: &'a AuditContext,
    at: Option<DateTime<Utc>>,
}

/// Appends one audit row. `before`/`after` are [`FeatureRecord::audit_snapshot`]s.
#[allow(clippy::too_many_arguments)] // Mirrors the row's columns; a struct would only rename them.
pub(crate) async fn insert_audit(
    conn: &mut PgConnection,
    feature: &str,
    operation: &str,
    gate: Option<&str>,
    value: Option<&str>,
    before: &FeatureRecord,
    after: &FeatureRecord,
    ctx: &AuditContext,
) -> Result<(), sqlx::Error> {
    let row = AuditRow { feature, operation, gate, value, before, after, ctx, at: None };
    insert_audit_row(conn, &row).await.map(|_| ())
}

async fn insert_audit_row(conn: &mut PgConnection, row: &AuditRow<'_>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        "insert into feature_audit (feature_key, operation, gate, value, before, after, actor, reason, request_id, at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, coalesce($10, now()))
         returning id",
        row.feature,
        row.operation,
        row.gate,
        row.value,
        row.before.audit_snapshot(),
        row.after.audit_snapshot(),
        row.ctx.actor,
        row.ctx.reason.as_deref(),
        row.ctx.request_id.as_deref(),
        row.at,
    )
    .fetch_one(conn)
    .await
}

/// Whether `feature` is registered, and its gates and kill switch (gates are read even for an
/// unregistered key, as Flipper does).
pub(crate) async fn fetch(conn: &mut PgConnection, feature: &str) -> Result<(bool, FeatureRecord), sqlx::Error> {
    let exists =
        sqlx::query_scalar!(r#"select exists (select 1 from flipper_features where key = $1) as "exists!""#, feature)
            .fetch_one(&mut *conn)
            .await?;
    let rows = sqlx::query!("select key, value from flipper_gates where feature_key = $1 order by id", feature)
        .fetch_all(&mut *conn)
        .await?;
    let paused = sqlx::query_scalar!("select paused from feature_controls where feature_key = $1", feature)
        .fetch_optional(&mut *conn)
        .await?;
    let mut record = FeatureRecord::empty(feature);
    for row in rows {
        record.apply_gate_row(&row.key, row.value);
    }
    record.paused = paused.unwrap_or(false);
    Ok((exists, record))
}

/// One registered feature, or `None` when it is not in `flipper_features`.
pub async fn feature(pool: &PgPool, feature: &str) -> Result<Option<FeatureRecord>, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let (exists, record) = fetch(&mut conn, feature).await?;
    Ok(exists.then_some(record))
}

/// Every feature, sorted by key: the registered ones, plus any key that only has gate rows.
pub async fn all_features(pool: &PgPool) -> Result<Vec<FeatureRecord>, sqlx::Error> {
    let (features, gates, controls) = read_all(pool).await?;
    let mut records: std::collections::BTreeMap<String, FeatureRecord> =
        features.into_iter().map(|k| (k.clone(), FeatureRecord::empty(&k))).collect();
    for (feature, gate, value) in gates {
        records.entry(feature.clone()).or_insert_with(|| FeatureRecord::empty(&feature)).apply_gate_row(&gate, value);
    }
    for (feature, paused) in controls {
        if let Some(record) = records.get_mut(&feature) {
            record.paused = paused;
        }
    }
    Ok(records.into_values().collect())
}

type AllRows = (Vec<String>, Vec<(String, String, Option<String>)>, Vec<(String, bool)>);

/// Reads the three tables in one repeatable-read transaction, so a snapshot never mixes two states.
async fn read_all(pool: &PgPool) -> Result<AllRows, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query!("set transaction isolation level repeatable read read only").execute(&mut *tx).await?;
    let features = sqlx::query_scalar!("select key from flipper_features").fetch_all(&mut *tx).await?;
    let gates = sqlx::query!("select feature_key, key, value from flipper_gates order by id")
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| (r.feature_key, r.key, r.value))
        .collect();
    let controls = sqlx::query!("select feature_key, paused from feature_controls")
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| (r.feature_key, r.paused))
        .collect();
    tx.commit().await?;
    Ok((features, gates, controls))
}

/// Every feature's description (set in the console), by key.
pub async fn descriptions(pool: &PgPool) -> Result<std::collections::HashMap<String, String>, sqlx::Error> {
    let rows = sqlx::query!("select feature_key, description from feature_descriptions").fetch_all(pool).await?;
    Ok(rows.into_iter().map(|r| (r.feature_key, r.description)).collect())
}

/// Sets a registered feature's description (blank removes it) and records a `describe` audit row
/// (gates unchanged), in one transaction.
pub async fn describe(pool: &PgPool, feature: &str, description: &str, ctx: &AuditContext) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    lock_feature(&mut tx, feature).await?;
    if !fetch(&mut tx, feature).await?.0 {
        return Err(StoreError::NotFound);
    }
    let description = description.trim();
    if description.is_empty() {
        sqlx::query!("delete from feature_descriptions where feature_key = $1", feature).execute(&mut *tx).await?;
    } else {
        sqlx::query!(
            "insert into feature_descriptions (feature_key, description, updated_by, updated_at)
             values ($1, $2, $3, now())
             on conflict (feature_key) do update
             set description = excluded.description, updated_by = excluded.updated_by, updated_at = now()",
            feature,
            description,
            ctx.actor,
        )
        .execute(&mut *tx)
        .await?;
    }
    let options = AuditOptions { operation: Some("describe"), at: None };
    record_in(&mut tx, feature, Some(description), ctx, &options).await?;
    tx.commit().await?;
    Ok(())
}

/// One audit row of `feature`, by id.
pub async fn audit_entry(pool: &PgPool, feature: &str, id: i64) -> Result<Option<AuditEntry>, sqlx::Error> {
    sqlx::query_as!(
        AuditEntry,
        "select id, at, feature_key, operation, gate, value, before, after, actor, reason, request_id
         from feature_audit where feature_key = $1 and id = $2",
        feature,
        id
    )
    .fetch_optional(pool)
    .await
}

/// Audit rows of `feature`, newest first; `before_id` continues a previous page.
pub async fn audit_log(
    pool: &PgPool,
    feature: &str,
    limit: i64,
    before_id: Option<i64>,
) -> Result<Vec<AuditEntry>, sqlx::Error> {
    sqlx::query_as!(
        AuditEntry,
        "select id, at, feature_key, operation, gate, value, before, after, actor, reason, request_id
         from feature_audit
         where feature_key = $1 and ($2::bigint is null or id < $2)
         order by id desc
         limit $3",
        feature,
        before_id,
        limit
    )
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_gates_and_values_for_the_audit_row() {
        let cases = [
            (Change::EnableBoolean, "enable", Some("boolean"), Some("true")),
            (Change::DisableBoolean, "disable", Some("boolean"), None),
            (Change::SetPercentageOfActors(2.5), "enable", Some("percentage_of_actors"), Some("2.5")),
            (Change::SetPercentageOfActors(0.0), "disable", Some("percentage_of_actors"), Some("0")),
            (Change::SetPercentageOfTime(25.0), "enable", Some("percentage_of_time"), Some("25")),
            (Change::AddActor("600061742".into()), "enable", Some("actors"), Some("600061742")),
            (Change::RemoveActor("600061742".into()), "disable", Some("actors"), Some("600061742")),
            (Change::Pause, "pause", None, None),
            (Change::Resume, "resume", None, None),
            (Change::Clear, "clear", None, None),
            (Change::AddFeature, "add_feature", None, None),
            (Change::RemoveFeature, "remove_feature", None, None),
        ];
        for (change, operation, gate, value) in cases {
            assert_eq!(change.operation(), operation, "{change:?}");
            assert_eq!(change.gate(), gate, "{change:?}");
            assert_eq!(change.value().as_deref(), value, "{change:?}");
        }
    }

    #[test]
    fn invalid_changes_are_refused_before_touching_the_database() {
        assert!(matches!(validate("", &Change::AddFeature), Err(StoreError::InvalidName)));
        assert!(matches!(validate(&"x".repeat(256), &Change::AddFeature), Err(StoreError::InvalidName)));
        assert!(matches!(validate("f", &Change::SetPercentageOfActors(100.5)), Err(StoreError::InvalidPercentage)));
        assert!(matches!(validate("f", &Change::SetPercentageOfTime(f64::NAN)), Err(StoreError::InvalidPercentage)));
        assert!(matches!(validate("f", &Change::AddActor(" ".into())), Err(StoreError::InvalidActor)));
        assert!(validate("f", &Change::SetPercentageOfActors(100.0)).is_ok());
    }

    #[test]
    fn audit_snapshot_has_the_documented_shape() {
        let mut record = FeatureRecord::empty("f");
        record.actors.insert("1".into());
        record.percentage_of_actors = Some("2.5".into());
        record.paused = true;
        assert_eq!(
            record.audit_snapshot(),
            json!({"boolean": false, "actors": ["1"], "percentage_of_actors": 2.5, "percentage_of_time": 0.0, "paused": true})
        );
    }

    #[test]
    fn a_restore_reads_the_audit_snapshot_back() {
        let mut record = FeatureRecord::empty("f");
        record.actors.insert("600061742".into());
        record.percentage_of_actors = Some("25".into());
        record.paused = true;
        let snapshot = GateSnapshot::from_audit(&record.audit_snapshot()).unwrap();
        assert_eq!(snapshot.actors.len(), 1);
        assert_eq!(snapshot.percentage_of_actors, 25.0);
        assert!(snapshot.paused && !snapshot.boolean);
        assert!(GateSnapshot::from_audit(&json!({})).is_none(), "rows written by hand with `{{}}` restore nothing");
        let change = Change::Restore { snapshot, audit_id: 7 };
        assert_eq!((change.operation(), change.gate(), change.value().as_deref()), ("restore", None, Some("7")));
        let bad = Change::Restore {
            snapshot: GateSnapshot { percentage_of_actors: 101.0, ..GateSnapshot::default() },
            audit_id: 1,
        };
        assert!(matches!(validate("f", &bad), Err(StoreError::InvalidPercentage)));
    }

    #[test]
    fn changes_read_as_before_and_after() {
        let before = json!({"boolean": false, "actors": ["1"], "percentage_of_actors": 2, "percentage_of_time": 0, "paused": false});
        let after = json!({"boolean": false, "actors": ["2"], "percentage_of_actors": "25", "percentage_of_time": 0, "paused": true});
        assert_eq!(describe_change(&before, &after), "paused no → yes; percentage_of_actors 2 → 25; actors +2 -1");
        assert_eq!(describe_change(&before, &before), "no change");
        assert_eq!(describe_change(&json!({}), &json!({"boolean": true})), "boolean no → yes");
    }

    #[test]
    fn paused_features_are_off_whatever_the_gates() {
        let mut record = FeatureRecord::empty("f");
        record.boolean = Some("true".into());
        assert!(record.is_enabled_for("1"));
        record.paused = true;
        assert!(!record.is_enabled_for("1"));
    }
}
