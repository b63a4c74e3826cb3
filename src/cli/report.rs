//! `ebg-notify report`: the rollout report against the configured database, printed as JSON or as
//! Markdown. The report itself and its Markdown rendering live in [`crate::report`], where the admin
//! route and the console's download reach them too; this is only the verb's parsing and printing.

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::report::{self, ReportRequest};

/// Builds the report for `feature` over `[from, to)` and prints it (`format` `json`, else Markdown).
pub async fn print(
    config: &Config,
    feature: String,
    from: Option<&str>,
    to: Option<&str>,
    format: &str,
) -> anyhow::Result<()> {
    let request = ReportRequest {
        feature,
        from: bound("from", from)?,
        to: bound("to", to)?,
        max_error_rate: config.report.max_error_rate,
        min_sample: config.report.min_sample,
        click_tracking: config.clicks.enabled,
    };
    let pool = crate::db::connect(&config.database).await?;
    let built = report::build(&pool, &request).await?;
    if format == "json" {
        println!("{}", serde_json::to_string_pretty(&built)?);
    } else {
        print!("{}", report::markdown(&built));
    }
    Ok(())
}

/// `--from`/`--to`: an RFC 3339 time or a date; absent means unbounded.
fn bound(name: &str, value: Option<&str>) -> anyhow::Result<Option<DateTime<Utc>>> {
    value
        .map(|v| {
            report::parse_time(v).ok_or_else(|| anyhow::anyhow!("--{name}: expected an RFC 3339 time or YYYY-MM-DD"))
        })
        .transpose()
}
