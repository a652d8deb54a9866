//! `rapport report --campaign ID | --offer ID | --experiment ID`: the KPIs of Decision.Report as a table
//! (sends, opens, click-through rate, conversions, revenue, average order value, revenue per
//! recipient per group), the uplift against the holdout with its 95% interval, and the sample-ratio
//! check. A campaign with an experiment also shows the experiment's arms.

use clap::Args;
use rapport_proto::common::v1::TimeRange;
use rapport_proto::decision::v1::{
    GetCampaignRequest, Kpis, ReportRequest, ReportResponse, decision_service_client::DecisionServiceClient,
    report_request::Subject,
};

use super::output::{money, print_json};
use super::{authorized, parse_time, status_error};

/// What a report is about: one campaign, offer or experiment.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Of {
    /// A campaign's KPIs: all, treatment and holdout.
    #[arg(long, value_name = "ID")]
    pub campaign: Option<String>,
    /// An offer's KPIs.
    #[arg(long, value_name = "ID")]
    pub offer: Option<String>,
    /// An experiment's KPIs per arm.
    #[arg(long, value_name = "ID")]
    pub experiment: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub of: Of,
    /// Decisions at or after this time (RFC 3339 or YYYY-MM-DD) [default: 30 days before --until].
    #[arg(long)]
    pub since: Option<String>,
    /// Decisions before this time [default: now].
    #[arg(long)]
    pub until: Option<String>,
    /// Print the response as JSON (with a campaign's experiment: `{"campaign": …, "experiment": …}`).
    #[arg(long)]
    pub json: bool,
}

/// Prints the report against `channel` with `token`.
pub async fn run(args: ReportArgs, channel: tonic::transport::Channel, token: &str) -> anyhow::Result<()> {
    let mut client = DecisionServiceClient::new(channel);
    let range = match (&args.since, &args.until) {
        (None, None) => None,
        (since, until) => Some(TimeRange {
            start: since.as_deref().map(parse_time).transpose()?,
            end: until.as_deref().map(parse_time).transpose()?,
        }),
    };
    let (subject, title) = match (&args.of.campaign, &args.of.offer, &args.of.experiment) {
        (Some(id), _, _) => (Subject::CampaignId(id.clone()), format!("campaign {id}")),
        (_, Some(id), _) => (Subject::OfferId(id.clone()), format!("offer {id}")),
        (_, _, Some(id)) => (Subject::ExperimentId(id.clone()), format!("experiment {id}")),
        _ => anyhow::bail!("--campaign, --offer or --experiment is required"),
    };
    let request = ReportRequest { subject: Some(subject), range };
    let report = client.report(authorized(request, token)?).await.map_err(status_error)?.into_inner();
    // A campaign with an experiment: the arms too.
    let mut experiment = None;
    if let Some(id) = &args.of.campaign {
        let request = GetCampaignRequest { campaign_id: id.clone() };
        let campaign = client.get_campaign(authorized(request, token)?).await.map_err(status_error)?.into_inner();
        if !campaign.experiment_id.is_empty() {
            let request = ReportRequest { subject: Some(Subject::ExperimentId(campaign.experiment_id.clone())), range };
            let arms = client.report(authorized(request, token)?).await.map_err(status_error)?.into_inner();
            experiment = Some((campaign.experiment_id, arms));
        }
    }
    if args.json {
        return match experiment {
            None => print_json(&report),
            Some((_, arms)) => {
                let both = serde_json::json!({
                    "campaign": super::output::to_json(&report)?,
                    "experiment": super::output::to_json(&arms)?,
                });
                println!("{}", serde_json::to_string_pretty(&both)?);
                Ok(())
            }
        };
    }
    println!("{title}");
    print_report(&report);
    if let Some((id, arms)) = experiment {
        println!();
        println!("experiment {id}");
        print_report(&arms);
    }
    Ok(())
}

fn percent(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn row(k: &Kpis) -> String {
    format!(
        "{:<10} {:>9} {:>7} {:>7} {:>7} {:>7} {:>11} {:>6} {:>12} {:>12} {:>13}",
        k.group,
        k.decisions,
        k.sends,
        k.opens,
        k.clicks,
        percent(k.click_through_rate),
        k.conversions,
        percent(k.conversion_rate),
        money(k.revenue.as_ref()),
        money(k.average_order_value.as_ref()),
        money(k.revenue_per_recipient.as_ref()),
    )
}

fn print_report(r: &ReportResponse) {
    println!(
        "{:<10} {:>9} {:>7} {:>7} {:>7} {:>7} {:>11} {:>6} {:>12} {:>12} {:>13}",
        "group",
        "decisions",
        "sends",
        "opens",
        "clicks",
        "CTR",
        "conversions",
        "conv",
        "revenue",
        "order value",
        "per recipient"
    );
    for k in &r.groups {
        println!("{}", row(k));
    }
    match &r.uplift {
        Some(u) => println!(
            "uplift in conversion rate against holdout: {:+.1} points (95% interval {:+.1} to {:+.1})",
            u.value * 100.0,
            u.low * 100.0,
            u.high * 100.0
        ),
        None => println!("uplift: no holdout or control to compare with"),
    }
    println!(
        "sample ratio check: p = {:.3}{}",
        r.sample_ratio_p_value,
        if r.sample_ratio_p_value < 0.001 { " (MISMATCH: the groups are not split as configured)" } else { "" }
    );
    if r.baseline.iter().any(|k| k.decisions > 0) {
        println!("the period before:");
        for k in &r.baseline {
            println!("{}", row(k));
        }
    }
}
