//! Templates, every version kept: a put stores the next version; messages name the version they use.

use prost::Message as _;
use rapport_errors::Error;
use rapport_proto::delivery::v1::Template;
use rapport_storage::{Db, now_millis};

use super::{Exec, V};

/// The template store.
#[derive(Clone)]
pub struct Templates {
    pub db: Db,
}

impl Templates {
    /// Stores `t` as the next version of its id and returns it with version and time set.
    pub async fn put(&self, mut t: Template) -> Result<Template, Error> {
        let now = now_millis();
        for _ in 0..5 {
            let current: Vec<(Option<i64>,)> = Exec::Db(&self.db)
                .all("SELECT MAX(version) FROM delivery_templates WHERE template_id = $1", &[(&t.template_id).into()])
                .await?;
            let version = current.into_iter().next().and_then(|r| r.0).unwrap_or(0) + 1;
            t.version = version;
            t.updated_at = Some(rapport_rpc::convert::timestamp(now));
            let inserted = Exec::Db(&self.db)
                .run(
                    "INSERT INTO delivery_templates (template_id, version, channel, body, updated_at)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[(&t.template_id).into(), version.into(), t.channel.into(), V::B(t.encode_to_vec()), now.into()],
                )
                .await?;
            if inserted == 1 {
                return Ok(t);
            }
        }
        Err(Error::new(rapport_errors::ErrorCode::Aborted, "template: concurrent saves of the same template; retry"))
    }

    /// Version `version` of a template, or the latest when 0.
    pub async fn get(&self, id: &str, version: i64) -> Result<Option<Template>, Error> {
        let rows: Vec<(Vec<u8>,)> = if version == 0 {
            Exec::Db(&self.db)
                .all(
                    "SELECT body FROM delivery_templates WHERE template_id = $1 ORDER BY version DESC LIMIT 1",
                    &[id.into()],
                )
                .await?
        } else {
            Exec::Db(&self.db)
                .all(
                    "SELECT body FROM delivery_templates WHERE template_id = $1 AND version = $2",
                    &[id.into(), version.into()],
                )
                .await?
        };
        rows.into_iter().next().map(|(b,)| Template::decode(b.as_slice()).map_err(Error::internal)).transpose()
    }

    /// The latest version of every template, by id, after `after`.
    pub async fn list(&self, after: &str, limit: i64) -> Result<Vec<Template>, Error> {
        let rows: Vec<(Vec<u8>,)> = Exec::Db(&self.db)
            .all(
                "SELECT t.body FROM delivery_templates t
                 JOIN (SELECT template_id, MAX(version) AS v FROM delivery_templates WHERE template_id > $1 GROUP BY template_id) m
                   ON t.template_id = m.template_id AND t.version = m.v
                 ORDER BY t.template_id LIMIT $2",
                &[after.into(), limit.into()],
            )
            .await?;
        rows.into_iter().map(|(b,)| Template::decode(b.as_slice()).map_err(Error::internal)).collect()
    }
}
