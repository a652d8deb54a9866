//! A seeded generator of multi-source customer data with realistic corruption and hard
//! negatives, with the truth, and pairwise precision / recall / F1.
//!
//! People live in households (sharing surname, address and often a landline; some share a
//! family email), some households have twins (same surname, date of birth and address,
//! different first names), names follow a Zipf law and cities are weighted so common names
//! in the same city are frequent, and 3% of people deliberately copy the first name, surname
//! and city of an earlier person. Each person appears in one or more sources; every source
//! has its own formats (dates ISO, `YYYYMMDD`, day first, month first, `12 Mar 1980`; phones
//! E.164, national, international, `00`), name layout (split, `First Last`, `LAST, First`),
//! case, abbreviations and missing-value rates. Records are corrupted with typos, nicknames,
//! initials, swapped first and last names, swapped day and month, digit typos, old
//! addresses, changed emails and missing values.

use std::collections::HashMap;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::standardize::nicknames;
use super::{EntityKind, SourceRecord};

const FIRST_NAMES: &[&str] = &[
    "John",
    "Mary",
    "James",
    "Sarah",
    "Robert",
    "Elizabeth",
    "Michael",
    "Emma",
    "William",
    "Olivia",
    "David",
    "Sophia",
    "Richard",
    "Margaret",
    "Thomas",
    "Jennifer",
    "Christopher",
    "Jessica",
    "Daniel",
    "Susan",
    "Joseph",
    "Katherine",
    "Anthony",
    "Rebecca",
    "Stephen",
    "Victoria",
    "Edward",
    "Amanda",
    "Matthew",
    "Patricia",
    "Andrew",
    "Deborah",
    "Peter",
    "Abigail",
    "Samuel",
    "Anne",
    "Benjamin",
    "Eleanor",
    "Nicholas",
    "Emily",
    "Alexander",
    "Charlotte",
    "Gregory",
    "Harriet",
    "Jeffrey",
    "Teresa",
    "Kenneth",
    "Valerie",
    "Lawrence",
    "Natalie",
    "Charles",
    "Frances",
    "Henry",
    "Rose",
    "Frederick",
    "Grace",
    "Timothy",
    "Chloe",
    "Patrick",
    "Lucy",
    "Philip",
    "Hannah",
    "Ronald",
    "Amelia",
    "Donald",
    "Isla",
    "Gerald",
    "Ava",
    "Joshua",
    "Mia",
    "Nathan",
    "Ella",
    "Zachary",
    "Poppy",
    "George",
    "Freya",
    "Oliver",
    "Lily",
    "Harry",
    "Evie",
    "Jacob",
    "Ruby",
    "Oscar",
    "Florence",
    "Leo",
    "Ivy",
    "Arthur",
    "Zoë",
    "Noah",
    "Alice",
    "Muhammad",
    "Aisha",
    "Arjun",
    "Priya",
    "Wei",
    "Mei",
    "José",
    "Renée",
    "Liam",
    "Sienna",
    "Finn",
    "Maya",
    "Adam",
    "Layla",
    "Ethan",
    "Imogen",
    "Luke",
    "Phoebe",
    "Ryan",
    "Megan",
    "Aaron",
    "Holly",
    "Kieran",
    "Bethany",
    "Callum",
    "Jade",
    "Dominic",
    "Naomi",
    "Stuart",
    "Gemma",
    "Graham",
    "Fiona",
    "Neil",
    "Karen",
    "Colin",
    "Tracy",
    "Keith",
    "Julie",
    "Derek",
    "Wendy",
];

const LAST_NAMES: &[&str] = &[
    "Smith",
    "Jones",
    "Williams",
    "Taylor",
    "Brown",
    "Davies",
    "Evans",
    "Wilson",
    "Thomas",
    "Johnson",
    "Roberts",
    "Robinson",
    "Thompson",
    "Wright",
    "Walker",
    "White",
    "Edwards",
    "Hughes",
    "Green",
    "Hall",
    "Lewis",
    "Harris",
    "Clarke",
    "Patel",
    "Jackson",
    "Wood",
    "Turner",
    "Martin",
    "Cooper",
    "Hill",
    "Ward",
    "Morris",
    "Moore",
    "Clark",
    "Lee",
    "King",
    "Baker",
    "Harrison",
    "Morgan",
    "Allen",
    "James",
    "Scott",
    "Phillips",
    "Watson",
    "Davis",
    "Parker",
    "Price",
    "Bennett",
    "Young",
    "Griffiths",
    "Mitchell",
    "Kelly",
    "Cook",
    "Carter",
    "Richardson",
    "Bailey",
    "Collins",
    "Bell",
    "Shaw",
    "Murphy",
    "Miller",
    "Cox",
    "Richards",
    "Khan",
    "Marshall",
    "Anderson",
    "Simpson",
    "Ellis",
    "Adams",
    "Singh",
    "Begum",
    "Wilkinson",
    "Foster",
    "Chapman",
    "Powell",
    "Webb",
    "Rogers",
    "Gray",
    "Mason",
    "Ali",
    "Hunt",
    "Hussain",
    "Campbell",
    "Matthews",
    "Owen",
    "Palmer",
    "Holmes",
    "Mills",
    "Barnes",
    "Knight",
    "Lloyd",
    "Butler",
    "Russell",
    "Barker",
    "Fisher",
    "Stevens",
    "Jenkins",
    "Murray",
    "Dixon",
    "Harvey",
    "Graham",
    "Pearson",
    "Ahmed",
    "Fletcher",
    "Walsh",
    "Kaur",
    "Gibson",
    "Howard",
    "Andrews",
    "Stewart",
    "Elliott",
    "Reynolds",
    "Saunders",
    "Payne",
    "Fox",
    "Ford",
    "Pearce",
    "Day",
    "Brooks",
    "West",
    "Lawrence",
    "Cole",
    "Atkinson",
    "Bradley",
    "Spencer",
    "Gill",
    "Dawson",
    "Ball",
    "Burton",
    "O'Brien",
    "Watts",
    "Rose",
    "Booth",
    "Perry",
    "Ryan",
    "Grant",
    "Wells",
    "Armstrong",
    "Francis",
    "Rees",
    "Hayes",
    "Hart",
    "Hudson",
    "Newman",
    "Barrett",
    "Webster",
    "Hunter",
    "Gregory",
    "Carr",
    "Lowe",
    "Page",
    "Marsh",
    "Riley",
    "Dunn",
    "Woods",
    "Parsons",
    "Berry",
    "Stone",
    "Reid",
    "Holland",
    "Hawkins",
    "Harding",
    "Porter",
    "Robertson",
    "Newton",
    "Oliver",
    "Reed",
    "Kennedy",
    "Williamson",
    "Bird",
    "Gardner",
    "Shah",
    "Dean",
    "Lane",
    "Cooke",
    "Bates",
    "Henderson",
    "Parry",
    "Burgess",
    "Bishop",
    "Walton",
    "Burns",
    "Nicholson",
    "Shepherd",
    "Ross",
    "Cross",
    "Long",
    "Freeman",
    "Warren",
    "Nicholls",
    "Hamilton",
    "Byrne",
    "Sutton",
    "McDonald",
    "Yates",
    "Hodgson",
    "Robson",
    "Curtis",
    "Hopkins",
    "O'Connor",
    "Harper",
    "Coleman",
    "Watkins",
    "Moss",
    "McCarthy",
    "Chambers",
    "O'Neill",
    "Griffin",
    "Sharp",
    "Hardy",
    "Wheeler",
    "Potter",
    "Osborne",
    "Johnston",
    "Gordon",
    "Doyle",
    "Wallace",
    "George",
    "Jordan",
    "Hutchinson",
    "Rowe",
    "Burke",
    "May",
    "Pritchard",
    "Gilbert",
    "Willis",
    "Higgins",
    "Read",
    "Miles",
    "Stevenson",
    "Stephenson",
    "Hammond",
    "Arnold",
    "Buckley",
    "Walters",
    "Hewitt",
    "Barber",
    "Nelson",
    "Slater",
    "Austin",
    "Sullivan",
    "Whitehead",
    "Mann",
    "Frost",
    "Lambert",
    "Stephens",
    "Blake",
    "Akhtar",
    "Lynch",
    "Goodwin",
    "Barton",
    "Woodward",
    "Thomson",
    "Cunningham",
    "Quinn",
    "Barnett",
    "Baxter",
    "Bibi",
    "Clayton",
    "Nash",
    "Greenwood",
    "Jennings",
    "Holt",
    "Kemp",
    "Poole",
    "Gallagher",
    "Bond",
    "Stokes",
    "Tucker",
    "Davidson",
    "Fowler",
    "Heath",
    "Norman",
    "Middleton",
    "Lee-Smith",
    "Müller",
    "Núñez",
    "García",
    "Kowalski",
    "Nowak",
    "Nguyen",
    "Chen",
    "Wang",
    "Zhang",
    "Okafor",
    "Mensah",
    "Haddad",
    "Rossi",
    "Esposito",
    "Novák",
    "Dubois",
    "Lefèvre",
    "Øster",
    "Sørensen",
];

const CITIES: &[(&str, &str)] = &[
    ("London", "SW"),
    ("Birmingham", "B"),
    ("Manchester", "M"),
    ("Leeds", "LS"),
    ("Glasgow", "G"),
    ("Liverpool", "L"),
    ("Bristol", "BS"),
    ("Sheffield", "S"),
    ("Edinburgh", "EH"),
    ("Cardiff", "CF"),
    ("Leicester", "LE"),
    ("Nottingham", "NG"),
    ("Newcastle upon Tyne", "NE"),
    ("Coventry", "CV"),
    ("Bradford", "BD"),
    ("Belfast", "BT"),
    ("Southampton", "SO"),
    ("Brighton", "BN"),
    ("Plymouth", "PL"),
    ("Reading", "RG"),
    ("Aberdeen", "AB"),
    ("York", "YO"),
    ("Oxford", "OX"),
    ("Cambridge", "CB"),
    ("Norwich", "NR"),
    ("Exeter", "EX"),
    ("Swansea", "SA"),
    ("Derby", "DE"),
];

const STREETS: &[&str] = &[
    "High",
    "Station",
    "Main",
    "Park",
    "Church",
    "London",
    "Victoria",
    "Green",
    "Manor",
    "Kings",
    "Queens",
    "New",
    "Grange",
    "Mill",
    "Alexandra",
    "Albert",
    "York",
    "Chester",
    "Windsor",
    "Springfield",
    "Highfield",
    "Richmond",
    "Stanley",
    "George",
    "Mount Pleasant",
    "Oak",
    "Elm",
    "Cedar",
    "Beech",
    "Willow",
    "Ash",
    "Birch",
    "Chestnut",
    "Maple",
    "Meadow",
    "Orchard",
    "Riverside",
    "School",
    "North",
    "South",
    "West",
    "East",
    "Broadway",
    "Castle",
    "Hill",
    "Bridge",
    "Market",
    "Water",
    "Cromwell",
    "Nelson",
    "Wellington",
    "Marlborough",
    "Balmoral",
    "Clarence",
    "Cambridge",
    "Oxford",
    "Trinity",
    "Priory",
    "Abbey",
    "Forest",
    "Lime",
    "Holly",
    "Rose",
    "Ivy",
    "Hawthorn",
    "Sycamore",
    "Poplar",
    "Laurel",
    "Heather",
    "Thornton",
    "Ashford",
    "Kingsway",
    "Fairfield",
    "Brook",
    "Woodland",
    "Sunnyside",
];

const STREET_TYPES: &[(&str, &str)] = &[
    ("Street", "St"),
    ("Road", "Rd"),
    ("Avenue", "Ave"),
    ("Lane", "Ln"),
    ("Drive", "Dr"),
    ("Close", "Cl"),
    ("Gardens", "Gdns"),
    ("Crescent", "Cres"),
    ("Place", "Pl"),
    ("Square", "Sq"),
    ("Terrace", "Tce"),
    ("Court", "Ct"),
];

const DOMAINS: &[&str] =
    &["gmail.com", "yahoo.co.uk", "hotmail.com", "outlook.com", "btinternet.com", "icloud.com", "aol.com", "sky.com"];

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut acc = 0.0;
        let cumulative = (0..n)
            .map(|i| {
                acc += 1.0 / ((i + 1) as f64).powf(s);
                acc
            })
            .collect();
        Zipf { cumulative }
    }

    fn sample(&self, rng: &mut StdRng) -> usize {
        let total = *self.cumulative.last().unwrap_or(&1.0);
        let x = rng.random_range(0.0..total);
        self.cumulative.partition_point(|&c| c < x)
    }
}

#[derive(Clone)]
struct Address {
    house: u32,
    street: usize,
    street_type: usize,
    city: usize,
    postcode: String,
}

#[derive(Clone)]
struct Person {
    first: String,
    last: String,
    dob: (u32, u32, u32),
    email: Option<String>,
    mobile: Option<String>,
    landline: Option<String>,
    address: Address,
    national_id: Option<String>,
}

struct Profile {
    date_format: u8,
    phone_format: u8,
    name_layout: u8,
    upper: bool,
    abbreviate: bool,
    house_in_street: bool,
    prefer_landline: bool,
    ascii_only: bool,
    missing_dob: f64,
    missing_email: f64,
    missing_phone: f64,
    missing_address: f64,
    has_national_id: bool,
}

fn format_dob(prof: &Profile, y: u32, m: u32, d: u32) -> String {
    match prof.date_format {
        0 => format!("{y:04}-{m:02}-{d:02}"),
        1 => format!("{y:04}{m:02}{d:02}"),
        2 => format!("{d:02}/{m:02}/{y:04}"),
        3 => format!("{m:02}/{d:02}/{y:04}"),
        _ => format!("{d} {} {y}", MONTHS[m as usize - 1]),
    }
}

struct Gen {
    rng: StdRng,
    first: Zipf,
    last: Zipf,
    city: Zipf,
    street: Zipf,
}

fn digits(rng: &mut StdRng, n: usize) -> String {
    (0..n).map(|_| char::from(b'0' + rng.random_range(0..10u8))).collect()
}

fn ascii_fold(s: &str) -> String {
    super::standardize::clean_text(s)
        .split(' ')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn typo(rng: &mut StdRng, s: &str) -> String {
    let mut c: Vec<char> = s.chars().collect();
    if c.len() < 3 {
        return s.to_owned();
    }
    let i = rng.random_range(1..c.len());
    let letter = char::from(b'a' + rng.random_range(0..26u8));
    match rng.random_range(0..4u8) {
        0 => c[i] = letter,
        1 => {
            c.remove(i);
        }
        2 => c.insert(i, letter),
        _ => {
            if i + 1 < c.len() {
                c.swap(i, i + 1);
            } else {
                c.swap(i - 1, i);
            }
        }
    }
    c.into_iter().collect()
}

impl Gen {
    fn address(&mut self, city: Option<usize>) -> Address {
        let city = city.unwrap_or_else(|| self.city.sample(&mut self.rng));
        let rng = &mut self.rng;
        let area = CITIES[city].1;
        let postcode = format!(
            "{}{} {}{}{}",
            area,
            rng.random_range(1..30u32),
            rng.random_range(1..10u32),
            char::from(b'A' + rng.random_range(0..26u8)),
            char::from(b'A' + rng.random_range(0..26u8)),
        );
        Address {
            house: rng.random_range(1..200),
            street: self.street.sample(rng),
            street_type: rng.random_range(0..STREET_TYPES.len()),
            city,
            postcode,
        }
    }

    fn dob(&mut self) -> (u32, u32, u32) {
        let y = self.rng.random_range(1935..2006);
        let m = self.rng.random_range(1..13);
        let d = self.rng.random_range(1..29);
        (y, m, d)
    }

    fn email(&mut self, first: &str, last: &str) -> String {
        let f = super::standardize::clean_text(first).replace(' ', "");
        let l = super::standardize::clean_text(last).replace(' ', "");
        let n = self.rng.random_range(1..1000u32);
        let d = DOMAINS[self.rng.random_range(0..DOMAINS.len())];
        match self.rng.random_range(0..4u8) {
            0 => format!("{f}.{l}{n}@{d}"),
            1 => format!("{}{l}{n}@{d}", &f[..1]),
            2 => format!("{f}{n}@{d}"),
            _ => format!("{l}.{f}{n}@{d}"),
        }
    }

    fn mobile(&mut self) -> String {
        format!("7{}", digits(&mut self.rng, 9))
    }

    fn landline(&mut self) -> String {
        if self.rng.random_bool(0.3) {
            format!("20{}", digits(&mut self.rng, 8))
        } else {
            format!("1{}", digits(&mut self.rng, 9))
        }
    }

    fn first_name(&mut self) -> String {
        FIRST_NAMES[self.first.sample(&mut self.rng)].to_owned()
    }

    fn person(&mut self, last: &str, address: &Address, landline: &Option<String>) -> Person {
        let first = self.first_name();
        let email = self.rng.random_bool(0.85).then(|| self.email(&first, last));
        let mobile = self.rng.random_bool(0.8).then(|| self.mobile());
        let national_id = self.rng.random_bool(0.5).then(|| {
            format!(
                "{}{}{}{}",
                char::from(b'A' + self.rng.random_range(0..26u8)),
                char::from(b'A' + self.rng.random_range(0..26u8)),
                digits(&mut self.rng, 6),
                char::from(b'A' + self.rng.random_range(0..4u8)),
            )
        });
        Person {
            first,
            last: last.to_owned(),
            dob: self.dob(),
            email,
            mobile,
            landline: landline.clone(),
            address: address.clone(),
            national_id,
        }
    }

    fn people(&mut self, n: usize) -> Vec<Person> {
        let mut people: Vec<Person> = Vec::with_capacity(n + 4);
        while people.len() < n {
            let x: f64 = self.rng.random_range(0.0..1.0);
            let size = if x < 0.55 {
                1
            } else if x < 0.8 {
                2
            } else if x < 0.93 {
                3
            } else {
                4
            };
            // a namesake of an earlier person in the same city
            if size == 1 && !people.is_empty() && self.rng.random_bool(0.06) {
                let other = people[self.rng.random_range(0..people.len())].clone();
                let address = self.address(Some(other.address.city));
                let landline = self.rng.random_bool(0.3).then(|| self.landline());
                let mut p = self.person(&other.last, &address, &landline);
                p.first = other.first.clone();
                let f = p.first.clone();
                if p.email.is_some() {
                    p.email = Some(self.email(&f, &other.last));
                }
                people.push(p);
                continue;
            }
            let last = LAST_NAMES[self.last.sample(&mut self.rng)].to_owned();
            let address = self.address(None);
            let landline = self.rng.random_bool(0.6).then(|| self.landline());
            let family_email = (size > 1 && self.rng.random_bool(0.15)).then(|| {
                let n = self.rng.random_range(1..1000u32);
                format!(
                    "the{}s{n}@{}",
                    super::standardize::clean_text(&last).replace(' ', ""),
                    DOMAINS[self.rng.random_range(0..DOMAINS.len())]
                )
            });
            let start = people.len();
            for _ in 0..size {
                let mut p = self.person(&last, &address, &landline);
                // distinct first names within a household
                while people[start..].iter().any(|q| {
                    super::standardize::canonical_first_name(&q.first.to_lowercase())
                        == super::standardize::canonical_first_name(&p.first.to_lowercase())
                }) {
                    p.first = self.first_name();
                    let f = p.first.clone();
                    if p.email.is_some() {
                        p.email = Some(self.email(&f, &last));
                    }
                }
                if let Some(e) = &family_email
                    && self.rng.random_bool(0.5)
                {
                    p.email = Some(e.clone());
                }
                people.push(p);
            }
            // twins
            if size >= 2 && self.rng.random_bool(0.2) {
                let dob = people[start].dob;
                people[start + 1].dob = dob;
            }
        }
        people.truncate(n);
        people
    }

    fn profile(&mut self, s: usize) -> Profile {
        let rng = &mut self.rng;
        Profile {
            date_format: (s % 5) as u8,
            phone_format: (s % 4) as u8,
            name_layout: (s % 6) as u8,
            upper: s.is_multiple_of(3),
            abbreviate: s % 2 == 1,
            house_in_street: s % 4 != 3,
            prefer_landline: s % 3 == 1,
            ascii_only: s % 4 == 2,
            missing_dob: rng.random_range(0.02..0.4),
            missing_email: rng.random_range(0.05..0.5),
            missing_phone: rng.random_range(0.05..0.5),
            missing_address: rng.random_range(0.02..0.3),
            has_national_id: s < 2,
        }
    }

    fn record(&mut self, p: &Person, prof: &Profile, source: &str, id: String) -> SourceRecord {
        let mut r = SourceRecord::new(source, id, EntityKind::Person);
        let a = &mut r.attributes;
        // names
        let mut first = p.first.clone();
        let mut last = p.last.clone();
        let nicks: Vec<&str> =
            nicknames().iter().filter(|(_, formal)| formal.eq_ignore_ascii_case(&first)).map(|(n, _)| *n).collect();
        if !nicks.is_empty() && self.rng.random_bool(0.2) {
            let n = nicks[self.rng.random_range(0..nicks.len())];
            first = format!("{}{}", n[..1].to_uppercase(), &n[1..]);
        }
        if self.rng.random_bool(0.04) {
            first = typo(&mut self.rng, &first);
        }
        if self.rng.random_bool(0.05) {
            last = typo(&mut self.rng, &last);
        }
        if self.rng.random_bool(0.02) {
            first = first.chars().take(1).collect();
        }
        if prof.ascii_only {
            first = ascii_fold(&first);
            last = ascii_fold(&last);
        }
        if prof.upper {
            first = first.to_uppercase();
            last = last.to_uppercase();
        }
        let swap = self.rng.random_bool(0.02);
        if self.rng.random_bool(0.02) {
            first.clear();
        }
        if self.rng.random_bool(0.01) {
            last.clear();
        }
        match prof.name_layout {
            4 => a.full_name = Some(format!("{first} {last}").trim().to_owned()),
            5 => a.full_name = Some(format!("{}, {first}", last.to_uppercase())),
            _ => {
                if swap {
                    std::mem::swap(&mut first, &mut last);
                }
                a.first_name = Some(first).filter(|s| !s.is_empty());
                a.last_name = Some(last).filter(|s| !s.is_empty());
            }
        }
        // date of birth
        if !self.rng.random_bool(prof.missing_dob) {
            let (y, mut m, mut d) = p.dob;
            let mut y = y;
            if d <= 12 && d != m && self.rng.random_bool(0.02) {
                std::mem::swap(&mut d, &mut m);
            }
            if self.rng.random_bool(0.02) {
                match self.rng.random_range(0..3u8) {
                    0 => d = if d % 10 == 8 { d - 1 } else { d + 1 },
                    1 => y += 1,
                    _ => y -= 10,
                }
            }
            a.date_of_birth = Some(format_dob(prof, y, m, d));
        }
        // email
        if let Some(e) = &p.email
            && !self.rng.random_bool(prof.missing_email)
        {
            let mut e = e.clone();
            if self.rng.random_bool(0.08) {
                e = self.email(&p.first, &p.last);
            } else if self.rng.random_bool(0.02) {
                e = typo(&mut self.rng, &e);
            }
            if prof.upper {
                e = e.to_uppercase();
            }
            a.email = Some(e);
        }
        // phone
        let phone = if prof.prefer_landline {
            p.landline.as_ref().or(p.mobile.as_ref())
        } else {
            p.mobile.as_ref().or(p.landline.as_ref())
        };
        if let Some(n) = phone
            && !self.rng.random_bool(prof.missing_phone)
        {
            let mut n = n.clone();
            if self.rng.random_bool(0.01) {
                let i = self.rng.random_range(1..n.len());
                let mut b = n.into_bytes();
                b[i] = if b[i] == b'9' { b'0' } else { b[i] + 1 };
                n = String::from_utf8(b).unwrap_or_default();
            }
            let (head, tail) = n.split_at(4.min(n.len()));
            a.phone = Some(match prof.phone_format {
                0 => format!("+44{n}"),
                1 => format!("0{head} {tail}"),
                2 => format!("+44 {head} {tail}"),
                _ => format!("0044 {n}"),
            });
        }
        // address
        if !self.rng.random_bool(prof.missing_address) {
            let addr = if self.rng.random_bool(0.08) { self.address(None) } else { p.address.clone() };
            let (full, short) = STREET_TYPES[addr.street_type];
            let mut street = format!("{} {}", STREETS[addr.street], if prof.abbreviate { short } else { full });
            if self.rng.random_bool(0.03) {
                street = typo(&mut self.rng, &street);
            }
            if prof.house_in_street {
                a.street = Some(format!("{} {street}", addr.house));
            } else {
                a.street = Some(street);
                a.house_number = Some(addr.house.to_string());
            }
            if !self.rng.random_bool(0.1) {
                let pc = if prof.upper { addr.postcode.clone() } else { addr.postcode.replace(' ', "").to_lowercase() };
                a.postcode = Some(pc);
            }
            if !self.rng.random_bool(0.1) {
                let mut city = CITIES[addr.city].0.to_owned();
                if self.rng.random_bool(0.02) {
                    city = typo(&mut self.rng, &city);
                }
                a.city = Some(if prof.upper { city.to_uppercase() } else { city });
            }
            a.country = Some("GB".to_owned());
        }
        if prof.has_national_id
            && let Some(nid) = &p.national_id
            && self.rng.random_bool(0.8)
        {
            a.national_id = Some(if self.rng.random_bool(0.01) { typo(&mut self.rng, nid) } else { nid.clone() });
        }
        // source systems keep something besides a name: a record without date of birth, email,
        // phone or address gets its date of birth back
        if a.date_of_birth.is_none() && a.email.is_none() && a.phone.is_none() && a.street.is_none() {
            let (y, m, d) = p.dob;
            a.date_of_birth = Some(format_dob(prof, y, m, d));
        }
        if prof.upper {
            for v in [&mut a.street, &mut a.city].into_iter().flatten() {
                *v = v.to_uppercase();
            }
        }
        r
    }
}

/// Generates records of `n_people` people across `n_sources` sources (seeded, so the same
/// arguments give the same data). Returns the records and, per record, its true person.
pub fn generate(n_people: usize, n_sources: usize, seed: u64) -> (Vec<SourceRecord>, Vec<u64>) {
    let n_sources = n_sources.max(1);
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
        first: Zipf::new(FIRST_NAMES.len(), 0.8),
        last: Zipf::new(LAST_NAMES.len(), 0.9),
        city: Zipf::new(CITIES.len(), 0.9),
        street: Zipf::new(STREETS.len(), 0.7),
    };
    let people = g.people(n_people);
    let profiles: Vec<Profile> = (0..n_sources).map(|s| g.profile(s)).collect();
    let names: Vec<String> = (0..n_sources).map(|s| format!("source{s:02}")).collect();
    let mut records = Vec::with_capacity(n_people * 5 / 2);
    let mut truth = Vec::with_capacity(n_people * 5 / 2);
    let mut next_id = vec![0u64; n_sources];
    let mut chosen: Vec<usize> = Vec::new();
    for (pid, p) in people.iter().enumerate() {
        let mut k = 1;
        while k < n_sources && g.rng.random_bool(0.55) {
            k += 1;
        }
        chosen.clear();
        while chosen.len() < k {
            let s = g.rng.random_range(0..n_sources);
            if !chosen.contains(&s) {
                chosen.push(s);
            }
        }
        if g.rng.random_bool(0.03) {
            chosen.push(chosen[0]); // a duplicate inside one source
        }
        for &s in &chosen {
            next_id[s] += 1;
            let id = format!("{}-{}", &names[s], next_id[s]);
            let r = g.record(p, &profiles[s], &names[s], id);
            records.push(r);
            truth.push(pid as u64);
        }
    }
    (records, truth)
}

/// Pairwise precision, recall and F1 of a clustering against the truth, counted over the pairs
/// of records in the same cluster (from the contingency table, not pair by pair).
pub fn pairwise_scores(predicted: &[usize], truth: &[u64]) -> (f64, f64, f64) {
    assert_eq!(predicted.len(), truth.len(), "one prediction per record");
    let pairs = |n: u64| n * n.saturating_sub(1) / 2;
    let mut both: HashMap<(usize, u64), u64> = HashMap::new();
    let mut pred: HashMap<usize, u64> = HashMap::new();
    let mut real: HashMap<u64, u64> = HashMap::new();
    for (&p, &t) in predicted.iter().zip(truth) {
        *both.entry((p, t)).or_default() += 1;
        *pred.entry(p).or_default() += 1;
        *real.entry(t).or_default() += 1;
    }
    let tp: u64 = both.values().map(|&n| pairs(n)).sum();
    let predicted_pairs: u64 = pred.values().map(|&n| pairs(n)).sum();
    let true_pairs: u64 = real.values().map(|&n| pairs(n)).sum();
    let precision = if predicted_pairs == 0 { 1.0 } else { tp as f64 / predicted_pairs as f64 };
    let recall = if true_pairs == 0 { 1.0 } else { tp as f64 / true_pairs as f64 };
    let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
    (precision, recall, f1)
}
