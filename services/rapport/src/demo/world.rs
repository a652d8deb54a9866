//! The small retailer `rapport demo` plays: people, the three systems that know them (CRM, web shop,
//! store loyalty) with overlapping and differently written records, their permissions, and what they did
//! over the last months. Everything comes from one seeded generator, so the same seed gives the same
//! world.

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

const FIRST: &[&str] = &[
    "Anna", "Ben", "Clara", "David", "Elif", "Felix", "Greta", "Hannes", "Ida", "Jonas", "Katrin", "Lukas", "Mia",
    "Noah", "Olga", "Paul", "Quirin", "Rosa", "Sami", "Tilda", "Umut", "Vera", "Wim", "Yara", "Zoe",
];
const LAST: &[&str] = &[
    "Albrecht", "Brandt", "Celik", "Dietrich", "Engel", "Fuchs", "Graf", "Hahn", "Iwanow", "Jansen", "Keller",
    "Lorenz", "Maier", "Nowak", "Otto", "Peters", "Roth", "Schulz", "Thiel", "Ulrich", "Vogt", "Winkler",
];
const CITIES: &[&str] = &["Hamburg", "Berlin", "Köln", "München", "Leipzig", "Bremen"];

/// A product of the shop: sku, category, price in cents.
pub const CATALOGUE: &[(&str, &str, i64)] = &[
    ("run-01", "running", 11_999),
    ("run-02", "running", 8_999),
    ("trail-01", "trail", 14_999),
    ("hike-01", "hiking", 17_999),
    ("sock-01", "accessories", 1_299),
    ("cap-01", "accessories", 2_499),
    ("yoga-01", "yoga", 3_999),
    ("swim-01", "swimming", 4_999),
];

/// How a person behaves, which decides the events generated and the triggers they meet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persona {
    /// Orders every few weeks.
    Regular,
    /// Spent a lot, then stopped: the lapsed high-value trigger's audience.
    LapsedHighValue,
    /// Put something in the cart a moment ago and did not buy: the abandoned-cart trigger's audience.
    CartAbandoner,
    /// Browses, never buys.
    Browser,
    /// Signed up recently: the welcome campaign's audience.
    Newcomer,
}

/// One person of the world.
#[derive(Debug, Clone)]
pub struct Person {
    pub index: usize,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    /// E.164.
    pub phone: String,
    pub loyalty_id: String,
    pub crm_id: String,
    pub web_user_id: String,
    pub cookie: String,
    pub city: String,
    pub persona: Persona,
    /// Which systems know the person.
    pub in_crm: bool,
    pub in_shop: bool,
    pub in_store: bool,
    /// Favourite category: most views and orders fall in it.
    pub favourite: &'static str,
}

/// A permission given or withdrawn: which person, where and how.
#[derive(Debug, Clone)]
pub struct ConsentAct {
    pub person: usize,
    /// email, sms or phone_call.
    pub channel: &'static str,
    pub granted: bool,
    /// web_form (sign-up), in_store (till), recorded_call (call centre), unsubscribe_link.
    pub method: &'static str,
    pub source: &'static str,
    pub actor: String,
    /// Days before now.
    pub days_ago: f64,
}

impl ConsentAct {
    /// The email opt-in ticked on the web shop's sign-up form.
    fn web_sign_up(person: usize, days_ago: f64) -> Self {
        ConsentAct {
            person,
            channel: "email",
            granted: true,
            method: "web_form",
            source: "webshop",
            actor: String::new(),
            days_ago,
        }
    }
}

/// Something a person did: an event name, how many days ago, and its properties.
#[derive(Debug, Clone)]
pub struct Act {
    pub person: usize,
    pub name: &'static str,
    pub days_ago: f64,
    pub source: &'static str,
    pub properties: serde_json::Value,
}

/// A cart someone fills today: the abandoned-cart trigger's case, unless they buy it after all.
#[derive(Debug, Clone)]
pub struct OpenCart {
    pub person: usize,
    /// The `cart_updated` properties.
    pub cart: serde_json::Value,
    /// Orders the cart half a second later, so the trigger's re-check finds the order and sends nothing.
    pub buys_anyway: bool,
}

/// The whole world.
#[derive(Debug)]
pub struct World {
    pub people: Vec<Person>,
    /// Permissions given and withdrawn before today.
    pub consents: Vec<ConsentAct>,
    /// What people did before today.
    pub acts: Vec<Act>,
    /// The last order of each lapsed high-value customer, placed just under 60 days before today (their
    /// earlier orders are in `acts`): the lapsed trigger's wait ends during the demo.
    pub lapsed_last_orders: Vec<(usize, serde_json::Value)>,
    /// The carts filled today.
    pub open_carts: Vec<OpenCart>,
}

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn order(rng: &mut StdRng, favourite: &str, big: bool) -> serde_json::Value {
    let mut items = Vec::new();
    let lines = if big { rng.random_range(2..=4) } else { rng.random_range(1..=2) };
    for i in 0..lines {
        let candidates: Vec<_> = CATALOGUE.iter().filter(|(_, c, _)| i > 0 || *c == favourite).collect::<Vec<_>>();
        let (sku, category, price) = **pick(rng, &candidates);
        let quantity = if big { rng.random_range(1..=3) } else { 1 };
        items.push(serde_json::json!({"sku": sku, "category": category, "price_minor": price, "quantity": quantity}));
    }
    let revenue: i64 =
        items.iter().map(|i| i["price_minor"].as_i64().unwrap_or(0) * i["quantity"].as_i64().unwrap_or(0)).sum();
    serde_json::json!({"revenue_minor": revenue, "currency": "EUR", "items": items})
}

impl World {
    /// The world of `seed` with `people` people.
    pub fn generate(seed: u64, people: usize) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut world = World {
            people: Vec::new(),
            consents: Vec::new(),
            acts: Vec::new(),
            lapsed_last_orders: Vec::new(),
            open_carts: Vec::new(),
        };
        for index in 0..people {
            let first = *pick(&mut rng, FIRST);
            let last = *pick(&mut rng, LAST);
            let persona = match rng.random_range(0..100) {
                0..=39 => Persona::Regular,
                40..=54 => Persona::LapsedHighValue,
                55..=69 => Persona::CartAbandoner,
                70..=84 => Persona::Browser,
                _ => Persona::Newcomer,
            };
            // Every person is known to at least one system; most to two or three, so records overlap.
            let (mut in_crm, mut in_shop, mut in_store) =
                (rng.random_bool(0.6), rng.random_bool(0.7), rng.random_bool(0.5));
            if !(in_crm || in_shop || in_store) {
                in_shop = true;
            }
            if persona == Persona::Newcomer {
                (in_crm, in_shop, in_store) = (false, true, false);
            }
            let person = Person {
                index,
                first_name: first.to_string(),
                last_name: last.to_string(),
                email: format!("{}.{}.{index}@example.com", first.to_lowercase(), last.to_lowercase()),
                phone: format!("+49151{:08}", 10_000_000 + index * 7_919 % 89_999_999),
                loyalty_id: format!("LOY{:07}", 100_000 + index),
                crm_id: format!("{:06}", 500_000 + index),
                web_user_id: format!("web-{index:05}"),
                cookie: format!("ck-{:016x}", rng.random::<u64>()),
                city: pick(&mut rng, CITIES).to_string(),
                persona,
                in_crm,
                in_shop,
                in_store,
                favourite: pick(&mut rng, CATALOGUE).1,
            };
            world.consents_of(&mut rng, &person);
            world.acts_of(&mut rng, &person);
            world.people.push(person);
        }
        world
    }

    fn consents_of(&mut self, rng: &mut StdRng, p: &Person) {
        let signup_days = rng.random_range(100.0..300.0);
        // Newcomers opt in today (see `newcomer_opt_ins`).
        if p.in_shop && p.persona != Persona::Newcomer && rng.random_bool(0.85) {
            self.consents.push(ConsentAct::web_sign_up(p.index, signup_days));
            // Some withdraw later, through the unsubscribe link of an earlier newsletter.
            if rng.random_bool(0.1) {
                self.consents.push(ConsentAct {
                    person: p.index,
                    channel: "email",
                    granted: false,
                    method: "unsubscribe_link",
                    source: "newsletter",
                    actor: String::new(),
                    days_ago: rng.random_range(1.0..signup_days),
                });
            }
        }
        if p.in_store && rng.random_bool(0.6) {
            self.consents.push(ConsentAct {
                person: p.index,
                channel: "sms",
                granted: true,
                method: "in_store",
                source: "store-till",
                actor: format!("clerk-{}", rng.random_range(1..20)),
                days_ago: rng.random_range(30.0..200.0),
            });
        }
        if p.in_crm && rng.random_bool(0.3) {
            self.consents.push(ConsentAct {
                person: p.index,
                channel: "phone_call",
                granted: rng.random_bool(0.7),
                method: "recorded_call",
                source: "call-centre",
                actor: format!("agent-{}", rng.random_range(1..10)),
                days_ago: rng.random_range(10.0..150.0),
            });
        }
    }

    fn acts_of(&mut self, rng: &mut StdRng, p: &Person) {
        let mut act = |name: &'static str, days_ago: f64, source: &'static str, properties: serde_json::Value| {
            self.acts.push(Act { person: p.index, name, days_ago, source, properties });
        };
        let views = match p.persona {
            Persona::Browser => rng.random_range(8..20),
            Persona::Newcomer => rng.random_range(1..4),
            _ => rng.random_range(3..10),
        };
        for _ in 0..views {
            let days = if p.persona == Persona::LapsedHighValue {
                rng.random_range(70.0..200.0)
            } else {
                rng.random_range(0.5..90.0)
            };
            let category = if rng.random_bool(0.7) { p.favourite } else { pick(rng, CATALOGUE).1 };
            let sku = CATALOGUE.iter().find(|(_, c, _)| *c == category).map(|(s, _, _)| *s).unwrap_or("run-01");
            act("product_viewed", days, "webshop", serde_json::json!({"sku": sku, "category": category}));
        }
        match p.persona {
            Persona::Regular => {
                for _ in 0..rng.random_range(1..5) {
                    let o = order(rng, p.favourite, false);
                    let source = if p.in_store && rng.random_bool(0.4) { "store-till" } else { "webshop" };
                    act("order_completed", rng.random_range(2.0..50.0), source, o);
                }
            }
            Persona::LapsedHighValue => {
                for _ in 0..rng.random_range(3..7) {
                    let o = order(rng, p.favourite, true);
                    act("order_completed", rng.random_range(65.0..240.0), "webshop", o);
                }
                let last = order(rng, p.favourite, true);
                self.lapsed_last_orders.push((p.index, last));
            }
            Persona::CartAbandoner => {
                if rng.random_bool(0.5) {
                    let o = order(rng, p.favourite, false);
                    act("order_completed", rng.random_range(20.0..90.0), "webshop", o);
                }
                let o = order(rng, p.favourite, false);
                let cart = serde_json::json!({"items": o["items"], "currency": "EUR"});
                let buys_anyway = rng.random_bool(0.2);
                self.open_carts.push(OpenCart { person: p.index, cart, buys_anyway });
            }
            Persona::Browser | Persona::Newcomer => {}
        }
    }

    /// The email opt-ins of today's newcomers (web sign-up form), which start the welcome campaign.
    pub fn newcomer_opt_ins(&self) -> Vec<ConsentAct> {
        self.people
            .iter()
            .filter(|p| p.persona == Persona::Newcomer)
            .map(|p| ConsentAct::web_sign_up(p.index, 0.0))
            .collect()
    }

    /// How many people each system knows, for the summary.
    pub fn source_counts(&self) -> (usize, usize, usize) {
        let count = |f: fn(&Person) -> bool| self.people.iter().filter(|p| f(p)).count();
        (count(|p| p.in_crm), count(|p| p.in_shop), count(|p| p.in_store))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_world() {
        let a = World::generate(7, 50);
        let b = World::generate(7, 50);
        assert_eq!(a.people.len(), 50);
        assert_eq!(a.acts.len(), b.acts.len());
        assert_eq!(
            a.people.iter().map(|p| p.email.clone()).collect::<Vec<_>>(),
            b.people.iter().map(|p| p.email.clone()).collect::<Vec<_>>()
        );
        assert_ne!(World::generate(8, 50).acts.len(), 0);
    }

    #[test]
    fn every_persona_and_source_appears_and_nothing_is_in_the_future() {
        let w = World::generate(1, 200);
        for persona in
            [Persona::Regular, Persona::LapsedHighValue, Persona::CartAbandoner, Persona::Browser, Persona::Newcomer]
        {
            assert!(w.people.iter().any(|p| p.persona == persona), "{persona:?}");
        }
        let (crm, shop, store) = w.source_counts();
        assert!(crm > 0 && shop > 0 && store > 0);
        assert!(w.people.iter().all(|p| p.in_crm || p.in_shop || p.in_store));
        assert!(w.acts.iter().all(|a| a.days_ago > 0.0) && w.consents.iter().all(|c| c.days_ago > 0.0));
        assert!(w.consents.iter().any(|c| !c.granted), "some permissions are withdrawn or refused");
        // Today's triggers: every lapsed high-value customer has a last order, every cart abandoner a cart,
        // every newcomer an opt-in (and no permission before today).
        let count = |persona| w.people.iter().filter(|p| p.persona == persona).count();
        assert_eq!(w.lapsed_last_orders.len(), count(Persona::LapsedHighValue));
        assert_eq!(w.open_carts.len(), count(Persona::CartAbandoner));
        assert!(w.open_carts.iter().any(|c| c.buys_anyway) && w.open_carts.iter().any(|c| !c.buys_anyway));
        assert_eq!(w.newcomer_opt_ins().len(), count(Persona::Newcomer));
        assert!(w.consents.iter().all(|c| w.people[c.person].persona != Persona::Newcomer));
    }
}
