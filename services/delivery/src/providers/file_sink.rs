//! The file sink: each message becomes one file under a directory (`<channel>/<message id>.eml` for
//! email, `.json` otherwise), written to a temporary name and renamed, so a message is there whole or not
//! at all and writing it again after a crash replaces it with the same content. The default for local
//! development, so `rapport serve` sends with nothing configured.

use std::path::PathBuf;

use super::{Handoff, Outcome, Outgoing, Provider};

/// Writes messages to files.
pub struct FileSink {
    name: String,
    dir: PathBuf,
    from: lettre::message::Mailbox,
}

impl FileSink {
    /// A sink writing under `dir`.
    pub fn new(name: &str, dir: PathBuf, from: lettre::message::Mailbox) -> Self {
        Self { name: name.to_string(), dir, from }
    }
}

#[tonic::async_trait]
impl Provider for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "file_sink"
    }

    async fn send(&self, m: &Outgoing, handoff: &dyn Handoff) -> Outcome {
        let channel = m.channel.as_str_name().trim_start_matches("CHANNEL_").to_ascii_lowercase();
        let dir = self.dir.join(&channel);
        let (file, body) = if m.channel == rapport_proto::common::v1::Channel::Email {
            match super::smtp::build(m, &self.from, None) {
                Ok(b) => (format!("{}.eml", m.message_id), b),
                Err(e) => return Outcome::Failed { detail: e, bounce: false },
            }
        } else {
            let doc = serde_json::json!({
                "message_id": m.message_id,
                "channel": channel,
                "to": m.recipient.as_str(),
                "customer_id": m.customer_id,
                "subject": m.rendered.subject,
                "text": m.rendered.text,
                "html": m.rendered.html,
                "decision_id": m.decision_id,
                "offer_id": m.offer_id,
            });
            (format!("{}.json", m.message_id), serde_json::to_vec_pretty(&doc).unwrap_or_default())
        };
        let write = async {
            tokio::fs::create_dir_all(&dir).await?;
            let tmp = dir.join(format!(".{file}.tmp"));
            tokio::fs::write(&tmp, &body).await?;
            Ok::<_, std::io::Error>(tmp)
        };
        let tmp = match write.await {
            Ok(t) => t,
            Err(e) => return Outcome::Retry { detail: format!("file sink: {e}") },
        };
        if !handoff.commit(self.name()).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Outcome::Retry { detail: "the hand-off could not be recorded".into() };
        }
        match tokio::fs::rename(&tmp, dir.join(&file)).await {
            Ok(()) => Outcome::Sent { detail: format!("written to {channel}/{file}") },
            Err(e) => Outcome::Retry { detail: format!("file sink: {e}") },
        }
    }

    async fn reconcile(&self, message_id: &str) -> Option<bool> {
        let mut entries = tokio::fs::read_dir(&self.dir).await.ok()?;
        while let Ok(Some(e)) = entries.next_entry().await {
            for ext in ["eml", "json"] {
                if tokio::fs::metadata(e.path().join(format!("{message_id}.{ext}"))).await.is_ok() {
                    return Some(true);
                }
            }
        }
        Some(false)
    }
}
