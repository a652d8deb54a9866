//! `rapport send`: a test message through Delivery.Send, as a campaign would send it (the template
//! rendered with the profile and the data given, consent re-checked at send time), and optionally waits
//! for its fate (sent, blocked or failed) with the status history.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use rapport_proto::common::v1::MessageClass;
use rapport_proto::delivery::v1::{
    GetMessageRequest, Message, MessageStatus, SendRequest, delivery_service_client::DeliveryServiceClient,
};

use super::output::{enum_name, print_json, time};
use super::{Who, authorized, status_error};

#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub who: Who,
    /// The delivery template to send.
    #[arg(long)]
    pub template: String,
    /// email, sms, push, in_app, ...
    #[arg(long, default_value = "email")]
    pub channel: String,
    /// Template variables as a JSON object, beside `profile` (e.g. '{"offer": {"title": "10% off"}}').
    #[arg(long, value_name = "JSON")]
    pub data: Option<String>,
    /// Send to this address or number instead of the profile's (it must still be permitted).
    #[arg(long)]
    pub to: Option<String>,
    /// marketing or service (service messages need no marketing consent, but are still never sent to a
    /// suppressed contact point).
    #[arg(long, default_value = "marketing")]
    pub class: String,
    /// The consent purpose checked [default: marketing for marketing messages].
    #[arg(long)]
    pub purpose: Option<String>,
    /// The template locale (BCP 47) [default: the customer's].
    #[arg(long)]
    pub locale: Option<String>,
    /// Idempotency key: the same key never sends twice [default: a new key per run].
    #[arg(long)]
    pub key: Option<String>,
    /// Wait until the message is sent, blocked or failed (at most this many seconds) and show its history.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "30")]
    pub wait: Option<u64>,
    /// Print the response (or, with --wait, the message) as JSON.
    #[arg(long)]
    pub json: bool,
}

fn settled(status: i32) -> bool {
    !matches!(
        MessageStatus::try_from(status),
        Ok(MessageStatus::Queued | MessageStatus::Deferred | MessageStatus::Unspecified)
    )
}

fn status_name(status: i32) -> String {
    enum_name(MessageStatus::try_from(status).map(|s| s.as_str_name()).unwrap_or("?"), "MESSAGE_STATUS_")
}

/// Sends the test message against `channel` with `token`.
pub async fn run(args: SendArgs, channel: tonic::transport::Channel, token: &str) -> anyhow::Result<()> {
    let mut client = DeliveryServiceClient::new(channel);
    let data = match &args.data {
        Some(text) => match serde_json::from_str(text).context("--data: not JSON")? {
            serde_json::Value::Object(map) => {
                Some(rapport_rpc::convert::json_to_struct(serde_json::Value::Object(map)))
            }
            _ => anyhow::bail!("--data: must be a JSON object, e.g. '{{\"name\": \"Ann\"}}'"),
        },
        None => None,
    };
    let message_class = match args.class.trim() {
        "marketing" => MessageClass::Marketing,
        "service" => MessageClass::Service,
        other => anyhow::bail!("--class: unknown value `{other}`; expected marketing or service"),
    };
    let key = args.key.clone().unwrap_or_else(|| format!("cli-test-{}", uuid_like()));
    let request = SendRequest {
        customer: Some(args.who.customer_ref()?),
        channel: super::consent::channel(&args.channel)?,
        template_id: args.template.clone(),
        data,
        idempotency_key: key,
        message_class: message_class as i32,
        purpose: args.purpose.clone().unwrap_or_default(),
        to: args.to.clone().unwrap_or_default(),
        locale: args.locale.clone().unwrap_or_default(),
        ..Default::default()
    };
    let sent = client.send(authorized(request, token)?).await.map_err(status_error)?.into_inner();
    let Some(seconds) = args.wait else {
        if args.json {
            return print_json(&sent);
        }
        println!(
            "{} message {} ({})",
            if sent.duplicate { "already sent:" } else { "queued" },
            sent.message_id,
            status_name(sent.status)
        );
        return Ok(());
    };
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let message = loop {
        let request = GetMessageRequest { message_id: sent.message_id.clone() };
        let m = client.get_message(authorized(request, token)?).await.map_err(status_error)?.into_inner();
        if settled(m.status) || Instant::now() >= deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if args.json {
        print_json(&message)?;
    } else {
        print_message(&message);
    }
    match MessageStatus::try_from(message.status) {
        Ok(MessageStatus::Blocked | MessageStatus::Failed | MessageStatus::Cancelled) => {
            let reason = message.history.last().map(|h| h.detail.as_str()).unwrap_or("");
            anyhow::bail!("message {} was {}: {reason}", message.message_id, status_name(message.status))
        }
        _ if !settled(message.status) => {
            anyhow::bail!("message {} still {} after {seconds} s", message.message_id, status_name(message.status))
        }
        _ => Ok(()),
    }
}

fn print_message(m: &Message) {
    println!(
        "message {} to customer {}: {}{}",
        m.message_id,
        m.customer_id,
        status_name(m.status),
        if m.provider.is_empty() { String::new() } else { format!(" via {}", m.provider) }
    );
    if !m.subject.is_empty() {
        println!("  subject: {}", m.subject);
    }
    for h in &m.history {
        let line = format!("  {}  {:<10} {}", time(h.at.as_ref()), status_name(h.status), h.detail);
        println!("{}", line.trim_end());
    }
}

/// A key unique enough for test messages: the time in nanoseconds and the process id.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{nanos:x}-{:x}", std::process::id())
}
