//! Hierarchies between customers of different kinds: household -> person, account -> account
//! (subsidiary), account -> site, account -> contact, site -> contact. A child has at most one parent of
//! each kind (linking again moves it), links never make a cycle, and links never merge anything.
//!
//! Links are stored under the ids the customers had when linked; every read follows aliases, so a link
//! survives a later merge of either side (and comes back with the right customer after a split).

use std::collections::BTreeSet;

use rapport_errors::{Error, ErrorCode};
use rapport_storage::now_millis;
use rapport_storage::sql::{Exec, V};

use crate::graph::Graph;

/// Published on every link, move and unlink.
pub const TOPIC_HIERARCHY_CHANGED: &str = "identity.hierarchy_changed";

/// The (parent kind, child kind) pairs a link may join.
pub const ALLOWED: &[(&str, &str)] = &[
    ("household", "person"),
    ("account", "account"),
    ("account", "site"),
    ("account", "contact"),
    ("site", "contact"),
];

/// Walking up stops after this many levels (a guard; links never make cycles).
const MAX_ANCESTORS: usize = 64;

/// The deepest descendants GetHierarchy returns.
pub const MAX_DEPTH: i32 = 3;

/// Who asked for a link or unlink.
#[derive(Debug, Clone, Default)]
pub struct LinkOrigin {
    pub source: String,
    pub event_id: String,
    pub actor: String,
}

/// One recorded link, move or unlink (the outbox payload's content).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HierarchyChange {
    pub child: String,
    pub child_kind: String,
    /// The parent of the same kind before (moved or unlinked); empty otherwise.
    pub previous_parent: String,
    /// The parent now; empty for an unlink.
    pub parent: String,
    pub parent_kind: String,
    pub role: String,
}

/// One entity in a hierarchy view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    pub customer_id: String,
    pub kind: String,
    pub display_name: String,
    /// Its role at `parent`.
    pub role: String,
    /// Its parent in this view; empty for the root.
    pub parent: String,
    pub child_count: i64,
}

/// The hierarchy around one entity.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hierarchy {
    /// From the root down to the entity's parent.
    pub ancestors: Vec<Node>,
    pub entity: Node,
    /// Direct children first, then grandchildren, each level by customer id.
    pub descendants: Vec<Node>,
}

fn placeholders(start: usize, n: usize) -> String {
    (start..start + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// `customer_id` and every alias of it.
async fn ids_of(exec: &mut Exec<'_>, customer_id: &str) -> Result<Vec<String>, Error> {
    let rows: Vec<(String,)> =
        exec.all("SELECT id FROM customers WHERE merged_into = $1 ORDER BY id", &[customer_id.into()]).await?;
    let mut ids = vec![customer_id.to_string()];
    ids.extend(rows.into_iter().map(|r| r.0));
    Ok(ids)
}

/// The current id and kind of `customer_id` (an alias is followed), if it exists.
async fn current(exec: &mut Exec<'_>, customer_id: &str) -> Result<Option<(String, String)>, Error> {
    let rows: Vec<(String, Option<String>, String)> =
        exec.all("SELECT id, merged_into, kind FROM customers WHERE id = $1", &[customer_id.into()]).await?;
    let Some((id, merged_into, kind)) = rows.into_iter().next() else { return Ok(None) };
    match merged_into {
        None => Ok(Some((id, kind))),
        Some(survivor) => {
            let rows: Vec<(String,)> =
                exec.all("SELECT kind FROM customers WHERE id = $1", &[survivor.as_str().into()]).await?;
            Ok(rows.into_iter().next().map(|(kind,)| (survivor, kind)))
        }
    }
}

/// The current id of a stored id (itself or its survivor).
async fn canonical(exec: &mut Exec<'_>, id: &str) -> Result<String, Error> {
    Ok(current(exec, id).await?.map_or_else(|| id.to_string(), |(id, _)| id))
}

/// A stored parent link: (parent id as stored, parent kind, role).
async fn parent_links(exec: &mut Exec<'_>, ids: &[String]) -> Result<Vec<(String, String, String)>, Error> {
    let sql = format!(
        "SELECT parent_id, parent_kind, role FROM hierarchy_links WHERE child_id IN ({}) ORDER BY parent_kind, created_at",
        placeholders(1, ids.len())
    );
    let binds: Vec<V> = ids.iter().map(V::from).collect();
    exec.all(&sql, &binds).await
}

/// The stored child links under any of `ids`: (child id as stored, role).
async fn child_links(exec: &mut Exec<'_>, ids: &[String]) -> Result<Vec<(String, String)>, Error> {
    let sql = format!(
        "SELECT child_id, role FROM hierarchy_links WHERE parent_id IN ({}) ORDER BY child_id",
        placeholders(1, ids.len())
    );
    let binds: Vec<V> = ids.iter().map(V::from).collect();
    exec.all(&sql, &binds).await
}

/// The name to show for a customer: a name from its matched source records, else its first identifier.
pub(crate) async fn display_name(exec: &mut Exec<'_>, ids: &[String]) -> Result<String, Error> {
    if let Some(name) = crate::records::record_name(exec, ids).await? {
        return Ok(name);
    }
    let sql = format!(
        "SELECT id_type, namespace, value FROM identifiers WHERE customer_id IN ({}) ORDER BY first_seen, id_type, value LIMIT 1",
        placeholders(1, ids.len())
    );
    let binds: Vec<V> = ids.iter().map(V::from).collect();
    let rows: Vec<(String, String, String)> = exec.all(&sql, &binds).await?;
    Ok(rows
        .into_iter()
        .next()
        .map(|(_, ns, value)| if ns.is_empty() { value } else { format!("{ns}:{value}") })
        .unwrap_or_default())
}

/// The most specific parent kind first: a contact's site before its account.
fn parent_rank(kind: &str) -> usize {
    ["site", "account", "household"].iter().position(|k| *k == kind).unwrap_or(9)
}

async fn node(exec: &mut Exec<'_>, id: &str, kind: &str, role: &str, parent: &str) -> Result<Node, Error> {
    let ids = ids_of(exec, id).await?;
    let display_name = display_name(exec, &ids).await?;
    let mut children = BTreeSet::new();
    for (child, _) in child_links(exec, &ids).await? {
        children.insert(canonical(exec, &child).await?);
    }
    Ok(Node {
        customer_id: id.to_string(),
        kind: kind.to_string(),
        display_name,
        role: role.to_string(),
        parent: parent.to_string(),
        child_count: children.len() as i64,
    })
}

/// The nearest parent of `id`: (current parent id, its kind, the child's role there).
async fn nearest_parent(exec: &mut Exec<'_>, id: &str) -> Result<Option<(String, String, String)>, Error> {
    let ids = ids_of(exec, id).await?;
    let mut links = parent_links(exec, &ids).await?;
    links.sort_by_key(|(_, kind, _)| parent_rank(kind));
    match links.into_iter().next() {
        None => Ok(None),
        Some((parent, kind, role)) => Ok(Some((canonical(exec, &parent).await?, kind, role))),
    }
}

impl Graph {
    /// Links `child` under `parent` (aliases followed), moving it if it had a parent of that kind.
    /// Returns the child as placed and the parent it had before, if linking moved it.
    pub async fn link(
        &self,
        parent: &str,
        child: &str,
        role: &str,
        origin: &LinkOrigin,
    ) -> Result<(Node, Option<String>), Error> {
        let (_guard, mut tx) = self.begin_write().await?;
        let mut exec = Exec::Tx(&mut tx);
        let (parent_id, parent_kind) = current(&mut exec, parent)
            .await?
            .ok_or_else(|| Error::not_found(format!("parent_customer_id: no customer {parent}")))?;
        let (child_id, child_kind) = current(&mut exec, child)
            .await?
            .ok_or_else(|| Error::not_found(format!("child_customer_id: no customer {child}")))?;
        for (field, id, kind) in
            [("parent_customer_id", &parent_id, &parent_kind), ("child_customer_id", &child_id, &child_kind)]
        {
            if kind == "erased" {
                return Err(Error::new(ErrorCode::FailedPrecondition, format!("{field}: customer {id} is erased")));
            }
        }
        if parent_id == child_id {
            return Err(Error::invalid("parent_customer_id", format!("is the child itself ({child_id})")));
        }
        if !ALLOWED.contains(&(parent_kind.as_str(), child_kind.as_str())) {
            let allowed: Vec<String> =
                ALLOWED.iter().filter(|(p, _)| *p == parent_kind).map(|(_, c)| c.to_string()).collect();
            let allowed = if allowed.is_empty() { "nothing".to_string() } else { allowed.join(" or ") };
            return Err(Error::invalid(
                "child_customer_id",
                format!("a {child_kind} cannot be linked under a {parent_kind} (a {parent_kind} takes {allowed})"),
            ));
        }
        // No cycle: the child must not be the parent or one of the parent's ancestors.
        let mut frontier = vec![parent_id.clone()];
        let mut seen = BTreeSet::from([parent_id.clone()]);
        while let Some(at) = frontier.pop() {
            if seen.len() > MAX_ANCESTORS * 4 {
                break;
            }
            let ids = ids_of(&mut exec, &at).await?;
            for (up, _, _) in parent_links(&mut exec, &ids).await? {
                let up = canonical(&mut exec, &up).await?;
                if up == child_id {
                    return Err(Error::invalid(
                        "parent_customer_id",
                        format!("linking would make a cycle: {parent_id} is already below {child_id}"),
                    ));
                }
                if seen.insert(up.clone()) {
                    frontier.push(up);
                }
            }
        }
        let child_ids = ids_of(&mut exec, &child_id).await?;
        let mut previous = None;
        for (p, kind, _) in parent_links(&mut exec, &child_ids).await? {
            if kind == parent_kind {
                let p = canonical(&mut exec, &p).await?;
                if p != parent_id {
                    previous = Some(p);
                }
            }
        }
        let sql = format!(
            "DELETE FROM hierarchy_links WHERE parent_kind = $1 AND child_id IN ({})",
            placeholders(2, child_ids.len())
        );
        let mut binds: Vec<V> = vec![parent_kind.as_str().into()];
        binds.extend(child_ids.iter().map(V::from));
        exec.run(&sql, &binds).await?;
        let now = now_millis();
        exec.run(
            "INSERT INTO hierarchy_links (child_id, parent_kind, parent_id, role, source, event_id, actor, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                child_id.as_str().into(),
                parent_kind.as_str().into(),
                parent_id.as_str().into(),
                role.into(),
                origin.source.as_str().into(),
                origin.event_id.as_str().into(),
                origin.actor.as_str().into(),
                now.into(),
            ],
        )
        .await?;
        let change = HierarchyChange {
            child: child_id.clone(),
            child_kind: child_kind.clone(),
            previous_parent: previous.clone().unwrap_or_default(),
            parent: parent_id.clone(),
            parent_kind,
            role: role.to_string(),
        };
        record_change(&mut exec, "link", &change, origin, now).await?;
        let placed = node(&mut exec, &child_id, &child_kind, role, &parent_id).await?;
        let message = self.events().hierarchy_changed(&change);
        self.finish(tx, vec![message]).await?;
        Ok((placed, previous))
    }

    /// Detaches `child` from `parent` (aliases followed). NOT_FOUND if it is not linked there.
    pub async fn unlink(&self, child: &str, parent: &str, origin: &LinkOrigin) -> Result<(), Error> {
        let (_guard, mut tx) = self.begin_write().await?;
        let mut exec = Exec::Tx(&mut tx);
        let (child_id, child_kind) = current(&mut exec, child)
            .await?
            .ok_or_else(|| Error::not_found(format!("child_customer_id: no customer {child}")))?;
        let (parent_id, parent_kind) = current(&mut exec, parent)
            .await?
            .ok_or_else(|| Error::not_found(format!("parent_customer_id: no customer {parent}")))?;
        let child_ids = ids_of(&mut exec, &child_id).await?;
        let parent_ids = ids_of(&mut exec, &parent_id).await?;
        let sql = format!(
            "DELETE FROM hierarchy_links WHERE child_id IN ({}) AND parent_id IN ({})",
            placeholders(1, child_ids.len()),
            placeholders(1 + child_ids.len(), parent_ids.len())
        );
        let binds: Vec<V> = child_ids.iter().chain(parent_ids.iter()).map(V::from).collect();
        if exec.run(&sql, &binds).await? == 0 {
            return Err(Error::not_found(format!("child_customer_id: {child_id} is not linked under {parent_id}")));
        }
        let change = HierarchyChange {
            child: child_id,
            child_kind,
            previous_parent: parent_id,
            parent: String::new(),
            parent_kind,
            role: String::new(),
        };
        record_change(&mut exec, "unlink", &change, origin, now_millis()).await?;
        let message = self.events().hierarchy_changed(&change);
        self.finish(tx, vec![message]).await?;
        Ok(())
    }

    /// The parents of `customer_id` (already canonical), one per kind.
    pub async fn parents(&self, customer_id: &str) -> Result<Vec<Node>, Error> {
        let mut exec = Exec::Db(self.db());
        let ids = ids_of(&mut exec, customer_id).await?;
        let mut out = Vec::new();
        for (parent, _, _) in parent_links(&mut exec, &ids).await? {
            let Some((pid, pkind)) = current(&mut exec, &parent).await? else { continue };
            let up = nearest_parent(&mut exec, &pid).await?;
            let (role, up) = up.map_or((String::new(), String::new()), |(p, _, role)| (role, p));
            out.push(node(&mut exec, &pid, &pkind, &role, &up).await?);
        }
        Ok(out)
    }

    /// The hierarchy around `customer_id`: ancestors from the root, the entity, and descendants down to
    /// `depth` levels (1..=3).
    pub async fn hierarchy(&self, customer_id: &str, depth: i32) -> Result<Hierarchy, Error> {
        let mut exec = Exec::Db(self.db());
        let (id, kind) = current(&mut exec, customer_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("customer_id: no customer {customer_id}")))?;
        // Up: the nearest parent (a contact's site before its account), then its nearest parent...
        let mut chain: Vec<(String, String, String)> = Vec::new(); // (id, kind, role of the one below)
        let mut seen = BTreeSet::from([id.clone()]);
        let mut at = id.clone();
        while chain.len() < MAX_ANCESTORS {
            let Some((parent, pkind, role)) = nearest_parent(&mut exec, &at).await? else { break };
            if !seen.insert(parent.clone()) {
                break;
            }
            chain.push((parent.clone(), pkind, role));
            at = parent;
        }
        let entity_role = chain.first().map(|c| c.2.clone()).unwrap_or_default();
        let entity_parent = chain.first().map(|c| c.0.clone()).unwrap_or_default();
        let entity = node(&mut exec, &id, &kind, &entity_role, &entity_parent).await?;
        // chain[i] is the parent of chain[i - 1]; its own role and parent are those of chain[i + 1].
        let mut ancestors = Vec::new();
        for (i, (pid, pkind, _)) in chain.iter().enumerate() {
            let (role, parent) =
                chain.get(i + 1).map_or((String::new(), String::new()), |up| (up.2.clone(), up.0.clone()));
            ancestors.push(node(&mut exec, pid, pkind, &role, &parent).await?);
        }
        ancestors.reverse();
        // Down: level by level.
        let depth = depth.clamp(1, MAX_DEPTH);
        let mut descendants: Vec<Node> = Vec::new();
        let mut placed = BTreeSet::from([id.clone()]);
        let mut level = vec![id.clone()];
        for _ in 0..depth {
            let mut next: Vec<Node> = Vec::new();
            for parent in &level {
                let ids = ids_of(&mut exec, parent).await?;
                for (child, role) in child_links(&mut exec, &ids).await? {
                    let Some((cid, ckind)) = current(&mut exec, &child).await? else { continue };
                    if placed.insert(cid.clone()) {
                        next.push(node(&mut exec, &cid, &ckind, &role, parent).await?);
                    }
                }
            }
            next.sort_by(|a, b| a.customer_id.cmp(&b.customer_id));
            level = next.iter().map(|n| n.customer_id.clone()).collect();
            descendants.extend(next);
            if level.is_empty() {
                break;
            }
        }
        Ok(Hierarchy { ancestors, entity, descendants })
    }
}

async fn record_change(
    exec: &mut Exec<'_>,
    action: &str,
    change: &HierarchyChange,
    origin: &LinkOrigin,
    now: i64,
) -> Result<(), Error> {
    exec.run(
        "INSERT INTO hierarchy_changes (id, action, child_id, parent_id, previous_parent_id, role, source, event_id, actor, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            format!("hch_{}", uuid::Uuid::now_v7().simple()).into(),
            action.into(),
            change.child.as_str().into(),
            if change.parent.is_empty() { change.previous_parent.as_str().into() } else { change.parent.as_str().into() },
            change.previous_parent.as_str().into(),
            change.role.as_str().into(),
            origin.source.as_str().into(),
            origin.event_id.as_str().into(),
            origin.actor.as_str().into(),
            now.into(),
        ],
    )
    .await?;
    Ok(())
}
