//! The command line.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use rapport_config::{Overrides, Settings};
use rapport_proto::common::v1::{PingRequest, diagnostics_service_client::DiagnosticsServiceClient};

/// Rapport: one-to-one marketing as five gRPC services.
#[derive(Debug, Parser)]
#[command(name = "rapport", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run services: all of them by default, embedded storage unless configured otherwise.
    Serve(ServeArgs),
    /// Apply every selected service's database migrations and exit.
    Migrate(MigrateArgs),
    /// Call Diagnostics.Ping on a running server with your token (the admin token by default).
    Ping(ClientArgs),
    /// Show the gRPC health of every service of a running server (no token needed).
    Health(ClientArgs),
    /// Load a running server at a fixed rate and report latency quantiles (docs/BENCHMARKS.md).
    Bench(BenchArgs),
    /// Play a small retailer on the whole suite in this process (embedded storage, file sinks).
    Demo(DemoArgs),
    /// Look a customer up: a profile by any identifier, a timeline.
    Profile(ProfileArgs),
    /// Record, check and list consent.
    Consent(ConsentArgs),
    /// Import a CSV file of customers or events through a column mapping.
    Import(ImportCommandArgs),
    /// Define offers from a file (TOML or JSON) and list the catalogue.
    #[command(long_about = OFFER_HELP)]
    Offer(OfferArgs),
    /// Define campaigns (with their offers) from a file and list them.
    #[command(long_about = CAMPAIGN_HELP)]
    Campaign(CampaignArgs),
    /// Send a test message: a template to a customer through delivery (consent is checked as for any send).
    Send(SendCommandArgs),
    /// The KPIs of a campaign, offer or experiment: sends, opens, CTR, conversions, revenue, uplift.
    Report(ReportCommandArgs),
    /// Mint API keys (stored hashed), hash a token, print roles and the scope of every rpc.
    Token(TokenArgs),
}

#[derive(Debug, Args)]
struct TokenArgs {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: crate::token_cli::TokenCommand,
}

#[derive(Debug, Args)]
struct DemoArgs {
    /// The seed of everything generated: the same seed plays the same story.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// How many people the retailer has.
    #[arg(long, default_value_t = 300)]
    people: usize,
    /// Where the embedded databases and message sinks go [default: a new directory under the system's temp dir].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Leave the suite serving afterwards, for exploring with the CLI.
    #[arg(long)]
    keep_running: bool,
}

#[derive(Debug, Args)]
struct ProfileArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: crate::ops::profile::ProfileCommand,
}

#[derive(Debug, Args)]
struct ConsentArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: crate::ops::consent::ConsentCommand,
}

#[derive(Debug, Args)]
struct ImportCommandArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    import: crate::ops::import::ImportArgs,
}

#[derive(Debug, Args)]
struct OfferArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: crate::ops::offer::OfferCommand,
}

#[derive(Debug, Args)]
struct CampaignArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: crate::ops::campaign::CampaignCommand,
}

#[derive(Debug, Args)]
struct SendCommandArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    send: crate::ops::send::SendArgs,
}

#[derive(Debug, Args)]
struct ReportCommandArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(flatten)]
    report: crate::ops::report::ReportArgs,
}

const OFFER_HELP: &str = "Define offers from a file (TOML or JSON) and list the catalogue.

An offer file (TOML; JSON with the same keys):

  name = \"Winter coats -20%\"
  placements = [\"email\", \"web_banner\"]  # email, sms, push, web_banner, call_centre_script, store_till, in_app
  channel = \"email\"                     # what it says on a channel: channel + template_id (+ variables),
  template_id = \"tpl_winter\"            #   or one [[content]] table per channel with the same keys
  eligibility_rule = \"profile.computed.order_count >= 1\"   # CEL; empty: everyone
  value_minor = 2500                    # what a conversion is worth, with currency = \"EUR\"
  weight = 1.0                          # tags = [...], class = \"marketing\" | \"service\", purpose = \"marketing\"
  valid_from = \"2026-12-01\"             # valid_until; [[caps]] max, per_customer, window_seconds
  # id = \"off_...\"                      # change this offer; otherwise the active offer of the same name, or a new one

The whole file is checked before anything is stored; an error names the file, the line and the field.";

const CAMPAIGN_HELP: &str = "Define campaigns (with their offers) from a file and list them.

A campaign file (TOML; JSON with the same keys), e.g. services/decision/examples/campaigns/*.toml:

  [campaign]
  name = \"Abandoned cart\"
  kind = \"triggered\"                    # or \"scheduled\" with schedule (cron, UTC) and segment_id
  trigger_events = [\"cart_updated\"]     # trigger_rule, wait_seconds, recheck_rule (CEL over event, profile)
  placement = \"email\"                   # channel (default: the placement's)
  holdout_share = 0.1                   # 0 to 0.5, for uplift
  offer_ids = []                        # offers that exist already; experiment_id = \"exp_...\"
  state = \"running\"                     # draft (default), running, paused, stopped
  # id = \"cmp_...\"                      # change this campaign; otherwise the campaign of the same name, or a new one

  [[offers]]                            # offers created or updated (by name) with it: the keys of an offer file
  name = \"Your cart is waiting\"
  placements = [\"email\"]
  channel = \"email\"
  template_id = \"tpl_abandoned_cart\"

The whole file is checked (rules, schedule, every offer, that named offers and the experiment exist)
before anything is stored; an error names the file, the line and the field.";

#[derive(Debug, Args)]
struct BenchArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// What to call: `ping` (the stack's floor), `resolve` (Identity.Resolve over a pool of customers),
    /// `track` (Profile.Track batches, identity included), `get-profile` (cached Profile.GetProfile) or
    /// `check` (Consent.Check of a contact point with a recorded grant) or `decide` (Decision.Decide for a
    /// web banner, the visitor named by email, over five offers) or `freshness` (an order tracked, then
    /// read back until its computed traits show it) or `send` (personalised marketing emails through
    /// Delivery.SendBatch to the configured SMTP relay, counted at the sink).
    #[arg(value_parser = ["ping", "resolve", "track", "get-profile", "check", "decide", "freshness", "send"])]
    target: String,
    /// Calls started per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of warm-up at the same rate, not measured.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// gRPC connections to spread the calls over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// How many distinct customers the calls touch.
    #[arg(long, default_value_t = 10_000)]
    customers: u64,
    /// Events per Track call; messages per SendBatch call.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// send: how many messages.
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// send: the SMTP sink's stats URL (bench/smtp_sink.py), watched until every message arrived.
    #[arg(long, default_value = "")]
    sink: String,
    /// send: prefix of the idempotency keys (the same run id submits the same messages again).
    #[arg(long, default_value = "")]
    run_id: String,
    /// send: the customers and the template exist already (a resubmission of the same run).
    #[arg(long)]
    skip_setup: bool,
}

#[derive(Debug, Args)]
struct ConfigArgs {
    /// TOML configuration file, layered over the embedded defaults and under RAPPORT__SECTION__KEY.
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Directory for embedded storage and the admin token [default: ./data].
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Services to run: all, or a comma-separated list of identity, consent, profile, decision, delivery.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    services: Option<Vec<String>>,
    /// gRPC address shared by every service [default: 127.0.0.1:50051].
    #[arg(long, value_name = "ADDR")]
    grpc_listen: Option<String>,
    /// HTTP address for health, metrics, tracking and unsubscribe [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    http_listen: Option<String>,
}

#[derive(Debug, Args)]
struct MigrateArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Services to migrate: all, or a comma-separated list.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    services: Option<Vec<String>>,
}

#[derive(Debug, Args)]
pub(crate) struct ClientArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Server address [default: http:// + server.grpc_listen].
    #[arg(long, value_name = "URL", global = true)]
    pub(crate) endpoint: Option<String>,
    /// Bearer token [default: the admin token file of the data directory].
    #[arg(long, env = "RAPPORT_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
}

fn load(
    config: &ConfigArgs,
    services: Option<Vec<String>>,
    grpc: Option<String>,
    http: Option<String>,
) -> anyhow::Result<Settings> {
    let overrides = Overrides { data_dir: config.data_dir.clone(), grpc_listen: grpc, http_listen: http, services };
    Ok(Settings::load(config.config.as_deref(), &overrides)?)
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Migrate(args) => {
            let settings = load(&args.config, args.services, None, None)?;
            let _telemetry = rapport_telemetry::init(&settings.telemetry)?;
            let migrated = rapport::services::migrate_all(&settings).await?;
            println!("migrated: {}", migrated.join(", "));
            Ok(())
        }
        Command::Ping(args) => ping(args).await,
        Command::Health(args) => health(args).await,
        Command::Bench(args) => bench(args).await,
        Command::Demo(args) => {
            rapport::demo::run(rapport::demo::DemoOptions {
                seed: args.seed,
                people: args.people,
                data_dir: args.data_dir,
                keep_running: args.keep_running,
            })
            .await
        }
        Command::Profile(args) => {
            let (channel, token) = connect(&args.client).await?;
            crate::ops::profile::run(args.command, channel, &token).await
        }
        Command::Consent(args) => {
            let (channel, token) = connect(&args.client).await?;
            crate::ops::consent::run(args.command, channel, &token).await
        }
        Command::Import(args) => {
            let (channel, token) = connect(&args.client).await?;
            crate::ops::import::run(args.import, channel, &token).await
        }
        Command::Offer(args) => {
            let (channel, token) = connect(&args.client).await?;
            crate::ops::offer::run(args.command, channel, &token).await
        }
        Command::Campaign(args) => {
            let (channel, token) = connect(&args.client).await?;
            crate::ops::campaign::run(args.command, channel, &token).await
        }
        Command::Send(args) => {
            let (channel, token) = connect(&args.client).await?;
            crate::ops::send::run(args.send, channel, &token).await
        }
        Command::Report(args) => {
            let (channel, token) = connect(&args.client).await?;
            crate::ops::report::run(args.report, channel, &token).await
        }
        Command::Token(args) => crate::token_cli::run(args.command, &load(&args.config, None, None, None)?),
    }
}

/// A channel to the server `args` names and the token to call it with.
pub(crate) async fn connect(args: &ClientArgs) -> anyhow::Result<(tonic::transport::Channel, String)> {
    let target = target(args)?;
    let token = target
        .token
        .context("no token: pass --token or RAPPORT_TOKEN, or run where the data directory holds admin.token")?;
    Ok((channel(&target.endpoint).await?, token))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let settings = load(&args.config, args.services, args.grpc_listen, args.http_listen)?;
    let _telemetry = rapport_telemetry::init(&settings.telemetry)?;
    // listening before the start: a SIGTERM while starting stops it cleanly once it has started
    let stop = rapport::server::StopSignal::install();
    let server = rapport::start(settings).await?;
    if server.admin_token_created {
        println!("created an admin token in {} (the CLI uses it by default)", server.admin_token_path.display());
    } else {
        println!("admin token: {}", server.admin_token_path.display());
    }
    println!("serving {} on grpc {} and http {}", server.services.join(", "), server.grpc_addr, server.http_addr);
    server.run_until(stop).await
}

struct Target {
    endpoint: String,
    token: Option<String>,
}

fn target(args: &ClientArgs) -> anyhow::Result<Target> {
    let settings = load(&args.config, None, None, None)?;
    let endpoint = args.endpoint.clone().unwrap_or_else(|| format!("http://{}", settings.server.grpc_listen));
    let token = match &args.token {
        Some(t) => Some(t.clone()),
        None => {
            let path = rapport::services::admin_token_path(&settings);
            std::fs::read_to_string(&path).ok().map(|t| t.trim().to_string())
        }
    };
    Ok(Target { endpoint, token })
}

async fn channel(endpoint: &str) -> anyhow::Result<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .with_context(|| format!("--endpoint `{endpoint}`"))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))
}

async fn ping(args: ClientArgs) -> anyhow::Result<()> {
    let (channel, token) = connect(&args).await?;
    let endpoint = target(&args)?.endpoint;
    let mut client = DiagnosticsServiceClient::new(channel);
    let mut request = tonic::Request::new(PingRequest { payload: b"ping".to_vec() });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().context("--token holds characters not allowed in a header")?,
    );
    let start = std::time::Instant::now();
    client.ping(request).await.map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?;
    println!("pong from {endpoint} in {:.2} ms", start.elapsed().as_secs_f64() * 1000.0);
    Ok(())
}

async fn health(args: ClientArgs) -> anyhow::Result<()> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let target = target(&args)?;
    let mut client = HealthClient::new(channel(&target.endpoint).await?);
    let mut all_serving = true;
    for name in [
        "rapport.identity.v1.IdentityService",
        "rapport.consent.v1.ConsentService",
        "rapport.profile.v1.ProfileService",
        "rapport.decision.v1.DecisionService",
        "rapport.delivery.v1.DeliveryService",
    ] {
        let status = match client.check(HealthCheckRequest { service: name.to_string() }).await {
            Ok(r) => format!("{:?}", r.into_inner().status()),
            Err(s) if s.code() == tonic::Code::NotFound => "NOT_RUNNING_HERE".to_string(),
            Err(s) => {
                all_serving = false;
                format!("ERROR {}", s.message())
            }
        };
        println!("{name:40} {status}");
    }
    if !all_serving {
        anyhow::bail!("health check failed");
    }
    Ok(())
}

use rapport::bench::authorized as bearer;

async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    use futures::FutureExt as _;
    let target = target(&args.client)?;
    let token: std::sync::Arc<str> = target.token.context("no token: pass --token or RAPPORT_TOKEN")?.into();
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(channel(&target.endpoint).await?);
    }
    let spec = rapport::bench::LoadSpec {
        rate: args.rate,
        duration: std::time::Duration::from_secs(args.seconds),
        warmup: std::time::Duration::from_secs(args.warmup),
        max_in_flight: 10_000,
    };
    let n = channels.len() as u64;
    let report = match args.target.as_str() {
        "ping" => {
            rapport::bench::run(&spec, move |i| {
                let mut client = DiagnosticsServiceClient::new(channels[(i % n) as usize].clone());
                let token = token.clone();
                async move { client.ping(bearer(PingRequest::default(), &token)).await.map(|_| ()) }.boxed()
            })
            .await
        }
        "resolve" => rapport::bench::resolve_load(&spec, channels, token, args.customers).await,
        "track" => rapport::bench::profile_load(&spec, channels, token, args.customers, "track", args.batch).await,
        "check" => rapport::bench::consent_load(&spec, channels, token, args.customers).await?,
        "decide" => rapport::bench_decide::decide_load(&spec, channels, token, args.customers).await?,
        "freshness" => rapport::bench::freshness_load(&spec, channels, token).await,
        "send" => {
            let spec = rapport::bench_send::SendSpec {
                messages: args.messages,
                rate: args.rate,
                batch: args.batch.clamp(1, 1000),
                customers: args.customers.min(args.messages.max(1)),
                sink: args.sink.clone(),
                run_id: if args.run_id.is_empty() {
                    format!("bench-{}", chrono::Utc::now().timestamp_millis())
                } else {
                    args.run_id.clone()
                },
                skip_setup: args.skip_setup,
            };
            return rapport::bench_send::run(&spec, channels, token).await;
        }
        _ => rapport::bench::profile_load(&spec, channels, token, args.customers, "get", 0).await,
    };
    println!("{}", report.summary(&format!("{} at {}/s over {} connection(s)", args.target, args.rate, n)));
    if let Some(e) = &report.first_error {
        println!("first error: {e}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
