//! The channels delivery serves from its own database: the in-app inbox, the call-centre task queue and
//! direct-mail runs (a CSV and a manifest per run for the print house). Each write is keyed by the
//! message id, so repeating it after a crash changes nothing: once, by construction.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::{Handoff, Outcome, Outgoing, Provider};
use crate::store::channels::{Channels, InboxRow, TaskRow};

/// The in-app inbox.
pub struct Inbox {
    pub name: String,
    pub store: Channels,
}

#[tonic::async_trait]
impl Provider for Inbox {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "in_app_inbox"
    }
    async fn send(&self, m: &Outgoing, _handoff: &dyn Handoff) -> Outcome {
        if m.customer_id.is_empty() {
            return Outcome::Failed { detail: "an in-app message needs a customer".into(), bounce: false };
        }
        let item = InboxRow {
            message_id: m.message_id.clone(),
            customer_id: m.customer_id.clone(),
            subject: m.rendered.subject.clone(),
            html: m.rendered.html.clone(),
            text: m.rendered.text.clone(),
            created_at: rapport_storage::now_millis(),
            read_at: None,
        };
        match self.store.add_inbox(&item).await {
            Ok(()) => Outcome::Sent { detail: "in the inbox".into() },
            Err(e) => Outcome::Retry { detail: format!("inbox: {e}") },
        }
    }
    async fn reconcile(&self, _message_id: &str) -> Option<bool> {
        // Writing again is harmless (keyed by message id): let the message be sent again.
        Some(false)
    }
}

/// The call-centre task queue.
pub struct CallCentre {
    pub name: String,
    pub store: Channels,
}

#[tonic::async_trait]
impl Provider for CallCentre {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "call_centre_queue"
    }
    async fn send(&self, m: &Outgoing, _handoff: &dyn Handoff) -> Outcome {
        let task = TaskRow {
            task_id: format!("task_{}", m.message_id.trim_start_matches("msg_")),
            message_id: m.message_id.clone(),
            customer_id: m.customer_id.clone(),
            phone: m.recipient.as_str().to_string(),
            script: if m.rendered.text.is_empty() { m.rendered.html.clone() } else { m.rendered.text.clone() },
            offer_id: m.offer_id.clone(),
            decision_id: m.decision_id.clone(),
            due_at: m.due_at,
            state: 1,
            agent_id: String::new(),
            outcome: String::new(),
            notes: String::new(),
        };
        match self.store.add_task(&task).await {
            Ok(()) => Outcome::Sent { detail: format!("task {} queued", task.task_id) },
            Err(e) => Outcome::Retry { detail: format!("tasks: {e}") },
        }
    }
    async fn reconcile(&self, _message_id: &str) -> Option<bool> {
        Some(false)
    }
}

/// Direct mail: rows collected per run; a run is closed into `<run>.csv` and `<run>.manifest.json`.
pub struct DirectMail {
    pub name: String,
    pub store: Channels,
    pub dir: PathBuf,
}

/// The columns of a direct-mail CSV.
pub const COLUMNS: [&str; 12] = [
    "message_id",
    "customer_id",
    "name",
    "street",
    "postal_code",
    "city",
    "country",
    "subject",
    "text",
    "offer_id",
    "decision_id",
    "campaign_id",
];

fn address_field(traits: &serde_json::Value, key: &str) -> String {
    let address = traits.get("address").or_else(|| traits.get("addresses").and_then(|a| a.get(0)));
    address
        .and_then(|a| a.get(key))
        .or_else(|| traits.get(key))
        .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
        .unwrap_or_default()
}

#[tonic::async_trait]
impl Provider for DirectMail {
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "direct_mail_file"
    }
    async fn send(&self, m: &Outgoing, _handoff: &dyn Handoff) -> Outcome {
        let t = &m.traits;
        let name = t.get("name").and_then(|v| v.as_str()).map(str::to_string).unwrap_or_else(|| {
            let first = t.get("first_name").and_then(|v| v.as_str()).unwrap_or_default();
            let last = t.get("last_name").and_then(|v| v.as_str()).unwrap_or_default();
            format!("{first} {last}").trim().to_string()
        });
        let street = address_field(t, "street");
        let city = address_field(t, "city");
        if name.is_empty() || street.is_empty() || city.is_empty() {
            return Outcome::Failed {
                detail: "the profile has no postal address (traits name, address.street, address.city)".into(),
                bounce: false,
            };
        }
        let row = serde_json::json!({
            "message_id": m.message_id, "customer_id": m.customer_id, "name": name, "street": street,
            "postal_code": address_field(t, "postal_code"), "city": city, "country": address_field(t, "country"),
            "subject": m.rendered.subject, "text": m.rendered.text, "offer_id": m.offer_id,
            "decision_id": m.decision_id, "campaign_id": m.campaign_id,
        });
        match self.store.add_direct_mail(&m.message_id, &self.name, &m.customer_id, &row).await {
            Ok(()) => Outcome::Sent { detail: "added to the open direct-mail run".into() },
            Err(e) => Outcome::Retry { detail: format!("direct mail: {e}") },
        }
    }
    async fn reconcile(&self, _message_id: &str) -> Option<bool> {
        Some(false)
    }
}

impl DirectMail {
    /// Closes the open run (if it has rows) and writes its CSV and manifest; the run id.
    pub async fn close_run(&self) -> Result<Option<String>, String> {
        let run_id = format!("run_{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%3fZ"));
        let rows = self.store.close_run(&self.name, &run_id).await.map_err(|e| e.to_string())?;
        if rows.is_empty() {
            return Ok(None);
        }
        self.write_run(&run_id, &rows).await?;
        Ok(Some(run_id))
    }

    async fn write_run(&self, run_id: &str, rows: &[(String, String)]) -> Result<(), String> {
        let mut csv = csv::Writer::from_writer(Vec::new());
        csv.write_record(COLUMNS).map_err(|e| e.to_string())?;
        for (_, json) in rows {
            let v: serde_json::Value = serde_json::from_str(json).map_err(|e| e.to_string())?;
            let record: Vec<String> =
                COLUMNS.iter().map(|c| v.get(*c).and_then(|x| x.as_str()).unwrap_or_default().to_string()).collect();
            csv.write_record(&record).map_err(|e| e.to_string())?;
        }
        let bytes = csv.into_inner().map_err(|e| e.to_string())?;
        let manifest = serde_json::json!({
            "run_id": run_id,
            "provider": self.name,
            "created_at": chrono::Utc::now().to_rfc3339(),
            "file": format!("{run_id}.csv"),
            "records": rows.len(),
            "columns": COLUMNS,
            "sha256": hex::encode(Sha256::digest(&bytes)),
        });
        tokio::fs::create_dir_all(&self.dir).await.map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let write = |name: String, body: Vec<u8>| {
            let dir = self.dir.clone();
            async move {
                let tmp = dir.join(format!(".{name}.tmp"));
                tokio::fs::write(&tmp, body).await?;
                tokio::fs::rename(&tmp, dir.join(name)).await
            }
        };
        write(format!("{run_id}.csv"), bytes).await.map_err(|e| e.to_string())?;
        // The manifest last: a print house takes a run only when its manifest is there.
        write(format!("{run_id}.manifest.json"), serde_json::to_vec_pretty(&manifest).unwrap_or_default())
            .await
            .map_err(|e| e.to_string())
    }
}
