//! The world's generation: people, their attributes, biographies, question–answer pairs and
//! multiple-choice items, as a pure function of [`WorldConfig`] driven by the seeded [`Rng`].
//! Nothing here touches the disk; `files.rs` writes what this produces.

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::pools::{
    CITIES, DAYS_IN_MONTH, EMPLOYERS, FEMALE_FIRST_NAMES, LAST_NAMES, MAJORS, MALE_FIRST_NAMES,
    MIDDLE_NAMES, MONTHS, UNIVERSITIES,
};
use super::Attribute;
use crate::data::records::{AugmentedRecord, Pair};
use crate::rng::{derive_seed, Rng};

// ---------------------------------------------------------------------------------------------
// Configuration and public types
// ---------------------------------------------------------------------------------------------

/// What to generate. Everything in the world is a pure function of this value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorldConfig {
    /// Base seed; every random choice derives from it.
    pub seed: u64,
    /// Number of people (names are unique).
    pub people: usize,
    /// Distinct biographies written for each person.
    pub bios_per_person: usize,
    /// Fraction of people whose QA pairs go into the augmented (training) records.
    pub train_fraction: f64,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            seed: 1234,
            people: 2000,
            bios_per_person: 4,
            train_fraction: 0.5,
        }
    }
}

/// Largest `people` accepted: a quarter of the distinct full names the pools can form, so drawing
/// unique names by rejection stays cheap.
pub const MAX_PEOPLE: usize = 1_000_000;
/// Largest `bios_per_person` accepted.
pub const MAX_BIOS_PER_PERSON: usize = 1000;

impl WorldConfig {
    /// Checks the ranges `generate` relies on.
    pub fn validate(&self) -> Result<(), String> {
        let capacity = (FEMALE_FIRST_NAMES.len() + MALE_FIRST_NAMES.len())
            * MIDDLE_NAMES.len()
            * LAST_NAMES.len();
        let max_people = MAX_PEOPLE.min(capacity / 4);
        if self.people > max_people {
            return Err(format!(
                "world: people = {} exceeds the maximum of {max_people}",
                self.people
            ));
        }
        if self.bios_per_person == 0 || self.bios_per_person > MAX_BIOS_PER_PERSON {
            return Err(format!(
                "world: bios_per_person = {} must be in 1..={MAX_BIOS_PER_PERSON}",
                self.bios_per_person
            ));
        }
        if !(self.train_fraction.is_finite() && (0.0..=1.0).contains(&self.train_fraction)) {
            return Err(format!(
                "world: train_fraction = {} must be in [0, 1]",
                self.train_fraction
            ));
        }
        Ok(())
    }

    /// Number of train people: `round(people * train_fraction)`.
    pub fn train_people(&self) -> usize {
        ((self.people as f64 * self.train_fraction).round() as usize).min(self.people)
    }
}

/// Grammatical gender used for pronouns; follows the first-name pool the person was drawn from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pronouns {
    She,
    He,
}

impl Pronouns {
    fn subject(self) -> &'static str {
        match self {
            Pronouns::She => "she",
            Pronouns::He => "he",
        }
    }
    fn object(self) -> &'static str {
        match self {
            Pronouns::She => "her",
            Pronouns::He => "him",
        }
    }
    fn possessive(self) -> &'static str {
        match self {
            Pronouns::She => "her",
            Pronouns::He => "his",
        }
    }
}

/// A calendar date; displayed as `March 4, 1962`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BirthDate {
    pub day: u8,
    /// 1..=12
    pub month: u8,
    pub year: u16,
}

impl fmt::Display for BirthDate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}, {}",
            MONTHS[self.month as usize - 1],
            self.day,
            self.year
        )
    }
}

/// First and last birth years drawn (inclusive).
pub const YEAR_RANGE: (u16, u16) = (1900, 1999);

impl BirthDate {
    /// Uniform month, uniform valid day within it (no February 29), uniform year in [`YEAR_RANGE`].
    fn draw(rng: &mut Rng) -> Self {
        let month = rng.index(12) as u8 + 1;
        let day = rng.index(DAYS_IN_MONTH[month as usize - 1] as usize) as u8 + 1;
        let year = YEAR_RANGE.0 + rng.index((YEAR_RANGE.1 - YEAR_RANGE.0 + 1) as usize) as u16;
        BirthDate { day, month, year }
    }
}

/// One question about one attribute of one person; `a` is the attribute value, verbatim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Qa {
    pub attribute: Attribute,
    pub q: String,
    pub a: String,
}

impl Qa {
    pub fn to_pair(&self) -> Pair {
        Pair {
            q: self.q.clone(),
            a: self.a.clone(),
        }
    }
}

/// One line of `eval.jsonl` / `eval_train.jsonl`: a question with its exact answer and four
/// multiple-choice options (the answer once, at `answer_index`, and three distractors drawn from
/// the same attribute's pool).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalItem {
    pub person: String,
    pub attribute: Attribute,
    pub q: String,
    pub a: String,
    pub options: Vec<String>,
    pub answer_index: usize,
}

/// Number of multiple-choice options per eval item.
pub const EVAL_OPTIONS: usize = 4;

/// One person of the world, with everything written about them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Person {
    pub id: usize,
    pub first: &'static str,
    pub middle: &'static str,
    pub last: &'static str,
    pub pronouns: Pronouns,
    pub birth_date: BirthDate,
    pub birth_city: &'static str,
    pub university: &'static str,
    pub major: &'static str,
    pub employer: &'static str,
    /// Always the fixed city of `employer`.
    pub employer_city: &'static str,
    /// True: QA pairs go into `augmented.jsonl` and `eval_train.jsonl`; false: only `eval.jsonl`.
    pub train: bool,
    pub bios: Vec<String>,
    /// One pair per attribute, in [`Attribute::ALL`] order.
    pub qa: Vec<Qa>,
    /// One multiple-choice item per attribute, in [`Attribute::ALL`] order.
    pub eval: Vec<EvalItem>,
}

impl Person {
    /// "First Middle Last".
    pub fn full_name(&self) -> String {
        format!("{} {} {}", self.first, self.middle, self.last)
    }

    /// The attribute's value as it appears in answers (and, verbatim, in every biography).
    pub fn value(&self, attr: Attribute) -> String {
        match attr {
            Attribute::BirthDate => self.birth_date.to_string(),
            Attribute::BirthCity => self.birth_city.to_string(),
            Attribute::University => self.university.to_string(),
            Attribute::Major => self.major.to_string(),
            Attribute::Employer => self.employer.to_string(),
            Attribute::EmployerCity => self.employer_city.to_string(),
        }
    }
}

/// The generated world: the config it came from, the people, and the shuffled biography order.
#[derive(Clone, Debug, PartialEq)]
pub struct World {
    config: WorldConfig,
    people: Vec<Person>,
    /// `(person id, biography index)` in the order written to `raw.jsonl`.
    order: Vec<(usize, usize)>,
}

// ---------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------

// Independent random streams, so that e.g. changing `bios_per_person` leaves names and attributes
// unchanged.
const STREAM_NAMES: u64 = 1;
const STREAM_ATTRS: u64 = 2;
const STREAM_BIOS: u64 = 3;
const STREAM_QA: u64 = 4;
const STREAM_EVAL: u64 = 5;
const STREAM_SPLIT: u64 = 6;
const STREAM_ORDER: u64 = 7;
const STREAM_PAIRS: u64 = 8;

fn stream(seed: u64, kind: u64, index: u64) -> Rng {
    Rng::new(derive_seed(derive_seed(seed, kind), index))
}

/// Probability that a sentence after the first refers to the person by full name, not a pronoun.
const FULL_NAME_CHANCE: f64 = 0.5;

/// Generates the world. Pure: the same config gives the same world.
///
/// Panics if `cfg.validate()` fails.
pub fn generate(cfg: &WorldConfig) -> World {
    if let Err(e) = cfg.validate() {
        panic!("{e}");
    }

    // Which people are train: a seeded shuffle of ids, the first `train_people` of it.
    let mut ids: Vec<usize> = (0..cfg.people).collect();
    stream(cfg.seed, STREAM_SPLIT, 0).shuffle(&mut ids);
    let mut train = vec![false; cfg.people];
    for &id in &ids[..cfg.train_people()] {
        train[id] = true;
    }

    let mut names_rng = stream(cfg.seed, STREAM_NAMES, 0);
    let mut taken: HashSet<(&str, &str, &str)> = HashSet::with_capacity(cfg.people);
    let mut people = Vec::with_capacity(cfg.people);
    for (id, &is_train) in train.iter().enumerate() {
        let (first, middle, last, pronouns) = loop {
            let she = names_rng.chance(0.5);
            let first = if she {
                *names_rng.choose(FEMALE_FIRST_NAMES)
            } else {
                *names_rng.choose(MALE_FIRST_NAMES)
            };
            let middle = *names_rng.choose(MIDDLE_NAMES);
            let last = *names_rng.choose(LAST_NAMES);
            if taken.insert((first, middle, last)) {
                let pronouns = if she { Pronouns::She } else { Pronouns::He };
                break (first, middle, last, pronouns);
            }
        };

        let mut rng = stream(cfg.seed, STREAM_ATTRS, id as u64);
        let birth_date = BirthDate::draw(&mut rng);
        let birth_city = *rng.choose(CITIES);
        let university = *rng.choose(UNIVERSITIES);
        let major = *rng.choose(MAJORS);
        let &(employer, employer_city) = rng.choose(EMPLOYERS);

        let mut person = Person {
            id,
            first,
            middle,
            last,
            pronouns,
            birth_date,
            birth_city,
            university,
            major,
            employer,
            employer_city,
            train: is_train,
            bios: Vec::new(),
            qa: Vec::new(),
            eval: Vec::new(),
        };
        person.bios = write_bios(&person, cfg.bios_per_person, cfg.seed);
        person.qa = write_qa(&person, cfg.seed);
        person.eval = write_eval(&person, cfg.seed);
        people.push(person);
    }

    // Biographies of everyone, interleaved across people.
    let mut order: Vec<(usize, usize)> = (0..cfg.people)
        .flat_map(|p| (0..cfg.bios_per_person).map(move |b| (p, b)))
        .collect();
    stream(cfg.seed, STREAM_ORDER, 0).shuffle(&mut order);

    World {
        config: cfg.clone(),
        people,
        order,
    }
}

/// `n` pairwise-different biographies: one sentence per attribute in a shuffled order, the first
/// naming the person in full, later ones by full name or pronoun.
fn write_bios(person: &Person, n: usize, seed: u64) -> Vec<String> {
    let mut rng = stream(seed, STREAM_BIOS, person.id as u64);
    let mut bios: Vec<String> = Vec::with_capacity(n);
    while bios.len() < n {
        let bio = write_bio(person, &mut rng);
        // Different draws give the same text with negligible probability; redraw if they do.
        if !bios.contains(&bio) {
            bios.push(bio);
        }
    }
    bios
}

fn write_bio(person: &Person, rng: &mut Rng) -> String {
    let mut attrs = Attribute::ALL;
    rng.shuffle(&mut attrs);
    let mut sentences = Vec::with_capacity(attrs.len());
    for (i, &attr) in attrs.iter().enumerate() {
        let template = *rng.choose(attr.templates());
        let use_name = i == 0 || rng.chance(FULL_NAME_CHANCE);
        sentences.push(render_template(
            template,
            person,
            &text_value(person, attr),
            use_name,
        ));
    }
    sentences.join(" ")
}

/// The attribute value as written in running text: the answer string, with "the" before
/// universities named "University of …" / "National University of …".
fn text_value(person: &Person, attr: Attribute) -> String {
    let v = person.value(attr);
    if attr == Attribute::University && needs_article(&v) {
        format!("the {v}")
    } else {
        v
    }
}

fn needs_article(university: &str) -> bool {
    university.starts_with("University of") || university.starts_with("National University")
}

/// Fills a sentence template. Placeholders: `{v}` the value; `{S}`/`{s}` subject, `{P}`/`{p}`
/// possessive, `{o}` object (upper case for sentence start). If `use_name`, the first reference to
/// the person is the full name ("Ada Rae Moss", "Ada Rae Moss's"); every other reference is a
/// pronoun. The sentence's first letter is capitalised.
pub fn render_template(template: &str, person: &Person, value: &str, use_name: bool) -> String {
    let name = person.full_name();
    let mut out = String::with_capacity(template.len() + 2 * name.len());
    let mut named = !use_name;
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = open
            + rest[open..]
                .find('}')
                .expect("unclosed placeholder in template");
        let key = &rest[open + 1..close];
        rest = &rest[close + 1..];
        if key == "v" {
            out.push_str(value);
            continue;
        }
        let upper = key.chars().next().is_some_and(|c| c.is_ascii_uppercase());
        let word = if !named {
            named = true;
            match key {
                "S" | "s" | "o" => name.clone(),
                "P" | "p" => possessive(&name),
                _ => panic!("unknown placeholder {{{key}}} in template"),
            }
        } else {
            let w = match key {
                "S" | "s" => person.pronouns.subject(),
                "o" => person.pronouns.object(),
                "P" | "p" => person.pronouns.possessive(),
                _ => panic!("unknown placeholder {{{key}}} in template"),
            };
            if upper {
                capitalize(w)
            } else {
                w.to_string()
            }
        };
        out.push_str(&word);
    }
    out.push_str(rest);
    capitalize(&out)
}

fn possessive(name: &str) -> String {
    format!("{name}'s")
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// One pair per attribute, the phrasing drawn per person.
fn write_qa(person: &Person, seed: u64) -> Vec<Qa> {
    let mut rng = stream(seed, STREAM_QA, person.id as u64);
    let name = person.full_name();
    Attribute::ALL
        .iter()
        .map(|&attribute| Qa {
            attribute,
            q: rng.choose(attribute.questions()).replace("{n}", &name),
            a: person.value(attribute),
        })
        .collect()
}

/// One multiple-choice item per QA pair: three distinct distractors from the attribute's pool.
fn write_eval(person: &Person, seed: u64) -> Vec<EvalItem> {
    let mut rng = stream(seed, STREAM_EVAL, person.id as u64);
    let name = person.full_name();
    person
        .qa
        .iter()
        .map(|qa| {
            let mut options = vec![qa.a.clone()];
            while options.len() < EVAL_OPTIONS {
                let candidate = draw_value(qa.attribute, &mut rng);
                if !options.contains(&candidate) {
                    options.push(candidate);
                }
            }
            rng.shuffle(&mut options);
            let answer_index = options.iter().position(|o| *o == qa.a).unwrap();
            EvalItem {
                person: name.clone(),
                attribute: qa.attribute,
                q: qa.q.clone(),
                a: qa.a.clone(),
                options,
                answer_index,
            }
        })
        .collect()
}

/// A uniformly drawn value of the attribute (for distractors).
fn draw_value(attr: Attribute, rng: &mut Rng) -> String {
    match attr {
        Attribute::BirthDate => BirthDate::draw(rng).to_string(),
        Attribute::BirthCity | Attribute::EmployerCity => rng.choose(CITIES).to_string(),
        Attribute::University => rng.choose(UNIVERSITIES).to_string(),
        Attribute::Major => rng.choose(MAJORS).to_string(),
        Attribute::Employer => rng.choose(EMPLOYERS).0.to_string(),
    }
}

impl World {
    pub fn config(&self) -> &WorldConfig {
        &self.config
    }

    pub fn people(&self) -> &[Person] {
        &self.people
    }

    pub fn person(&self, id: usize) -> &Person {
        &self.people[id]
    }

    pub fn train_people(&self) -> impl Iterator<Item = &Person> {
        self.people.iter().filter(|p| p.train)
    }

    pub fn heldout_people(&self) -> impl Iterator<Item = &Person> {
        self.people.iter().filter(|p| !p.train)
    }

    /// `(person id, biography index)` in `raw.jsonl` order.
    pub fn bio_order(&self) -> &[(usize, usize)] {
        &self.order
    }

    /// All biographies in `raw.jsonl` order.
    pub fn raw_texts(&self) -> impl Iterator<Item = &str> {
        self.order
            .iter()
            .map(|&(p, b)| self.people[p].bios[b].as_str())
    }

    /// One record per biography of a train person, in `raw.jsonl` order; each carries all of the
    /// person's QA pairs, in an order shuffled per record.
    pub fn augmented_records(&self) -> Vec<AugmentedRecord> {
        self.augmented_records_without(None)
    }

    /// As `augmented_records`, without the pairs about `skip` (the ablation study's
    /// leave-one-category-out data); the other pairs keep their order.
    pub fn augmented_records_without(&self, skip: Option<Attribute>) -> Vec<AugmentedRecord> {
        self.order
            .iter()
            .filter(|&&(p, _)| self.people[p].train)
            .map(|&(p, b)| {
                let person = &self.people[p];
                let index = (p * self.config.bios_per_person + b) as u64;
                let mut qa: Vec<&Qa> = person.qa.iter().collect();
                stream(self.config.seed, STREAM_PAIRS, index).shuffle(&mut qa);
                AugmentedRecord {
                    text: person.bios[b].clone(),
                    pairs: qa
                        .into_iter()
                        .filter(|q| Some(q.attribute) != skip)
                        .map(Qa::to_pair)
                        .collect(),
                    chain: None,
                }
            })
            .collect()
    }

    /// Eval items of the held-out people (`train == false`) or of the train people (`true`), by
    /// person id then attribute.
    pub fn eval_items(&self, train: bool) -> impl Iterator<Item = &EvalItem> {
        self.people
            .iter()
            .filter(move |p| p.train == train)
            .flat_map(|p| p.eval.iter())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A world small enough for unit tests.
    pub(crate) fn small(seed: u64) -> WorldConfig {
        WorldConfig {
            seed,
            people: 300,
            bios_per_person: 5,
            train_fraction: 0.5,
        }
    }

    #[test]
    fn records_without_a_category_drop_exactly_its_pairs_and_keep_the_others_in_order() {
        let world = generate(&small(3));
        let all = world.augmented_records();
        let without = world.augmented_records_without(Some(Attribute::Major));
        assert_eq!(all.len(), without.len());
        let majors: std::collections::HashSet<String> = world
            .people
            .iter()
            .flat_map(|p| p.qa.iter())
            .filter(|q| q.attribute == Attribute::Major)
            .map(|q| q.q.clone())
            .collect();
        for (a, w) in all.iter().zip(&without) {
            assert_eq!(a.text, w.text);
            assert_eq!(w.pairs.len(), Attribute::ALL.len() - 1);
            let kept: Vec<_> = a.pairs.iter().filter(|p| !majors.contains(&p.q)).collect();
            assert_eq!(kept.len(), w.pairs.len());
            assert!(kept
                .iter()
                .zip(&w.pairs)
                .all(|(k, p)| k.q == p.q && k.a == p.a));
        }
    }

    #[test]
    fn names_are_unique_even_for_a_large_world() {
        let cfg = WorldConfig {
            people: 30_000,
            bios_per_person: 1,
            ..WorldConfig::default()
        };
        let world = generate(&cfg);
        let names: HashSet<String> = world.people().iter().map(Person::full_name).collect();
        assert_eq!(names.len(), cfg.people);
    }

    #[test]
    fn every_biography_states_every_attribute_value() {
        let world = generate(&small(3));
        for p in world.people() {
            assert_eq!(p.bios.len(), 5);
            for bio in &p.bios {
                assert!(bio.starts_with(&p.full_name()) || bio.contains(&p.full_name()));
                for attr in Attribute::ALL {
                    assert!(
                        bio.contains(&p.value(attr)),
                        "{attr} = {:?} missing from {bio:?}",
                        p.value(attr)
                    );
                }
            }
        }
    }

    #[test]
    fn first_sentence_names_the_person_in_full() {
        let world = generate(&small(4));
        for p in world.people() {
            for bio in &p.bios {
                let first = bio.split(". ").next().unwrap();
                assert!(first.contains(&p.full_name()), "{bio}");
            }
        }
    }

    #[test]
    fn each_qa_answer_appears_in_that_persons_biographies() {
        let world = generate(&small(6));
        for p in world.people() {
            assert_eq!(p.qa.len(), Attribute::ALL.len());
            for qa in &p.qa {
                assert!(qa.q.contains(&p.full_name()), "{}", qa.q);
                assert!(qa.q.ends_with('?'));
                for bio in &p.bios {
                    assert!(bio.contains(&qa.a), "{:?} not in {bio:?}", qa.a);
                }
            }
        }
    }

    #[test]
    fn employer_city_is_determined_by_employer() {
        let world = generate(&WorldConfig::default());
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for p in world.people() {
            let fixed = EMPLOYERS.iter().find(|e| e.0 == p.employer).unwrap().1;
            assert_eq!(p.employer_city, fixed);
            assert_eq!(
                *seen.entry(p.employer).or_insert(p.employer_city),
                p.employer_city
            );
        }
        for (employer, city) in EMPLOYERS {
            assert!(CITIES.contains(city), "{employer}: {city} not in CITIES");
        }
    }

    #[test]
    fn split_is_disjoint_covers_everyone_and_follows_fraction() {
        for frac in [0.0, 0.3, 0.5, 1.0] {
            let cfg = WorldConfig {
                train_fraction: frac,
                ..small(8)
            };
            let world = generate(&cfg);
            let train: HashSet<usize> = world.train_people().map(|p| p.id).collect();
            let held: HashSet<usize> = world.heldout_people().map(|p| p.id).collect();
            assert!(train.is_disjoint(&held));
            assert_eq!(train.len() + held.len(), cfg.people);
            assert_eq!(train.len(), cfg.train_people());
            // Augmented records carry only train people; eval items only held-out people.
            let train_names: HashSet<String> =
                world.train_people().map(Person::full_name).collect();
            for r in world.augmented_records() {
                assert!(train_names.iter().any(|n| r.text.contains(n.as_str())));
            }
            assert!(world
                .eval_items(false)
                .all(|e| !train_names.contains(&e.person)));
            assert!(world
                .eval_items(true)
                .all(|e| train_names.contains(&e.person)));
        }
    }

    #[test]
    fn eval_options_hold_the_answer_exactly_once_at_answer_index() {
        let world = generate(&small(9));
        let mut positions = [0usize; EVAL_OPTIONS];
        for item in world.eval_items(false).chain(world.eval_items(true)) {
            assert_eq!(item.options.len(), EVAL_OPTIONS);
            assert_eq!(item.options[item.answer_index], item.a);
            assert_eq!(item.options.iter().filter(|o| **o == item.a).count(), 1);
            let distinct: HashSet<&String> = item.options.iter().collect();
            assert_eq!(distinct.len(), EVAL_OPTIONS);
            positions[item.answer_index] += 1;
            for o in &item.options {
                let fits = match item.attribute {
                    Attribute::BirthCity | Attribute::EmployerCity => CITIES.contains(&o.as_str()),
                    Attribute::University => UNIVERSITIES.contains(&o.as_str()),
                    Attribute::Major => MAJORS.contains(&o.as_str()),
                    Attribute::Employer => EMPLOYERS.iter().any(|e| e.0 == o),
                    Attribute::BirthDate => MONTHS.iter().any(|m| o.starts_with(m)),
                };
                assert!(fits, "{o:?} is not a {}", item.attribute);
            }
        }
        // The answer is not always in the same slot.
        assert!(positions.iter().all(|&c| c > 0), "{positions:?}");
    }

    #[test]
    fn biographies_of_one_person_differ() {
        let world = generate(&WorldConfig {
            bios_per_person: 10,
            ..small(10)
        });
        for p in world.people() {
            let distinct: HashSet<&String> = p.bios.iter().collect();
            assert_eq!(distinct.len(), p.bios.len());
        }
    }

    #[test]
    fn raw_order_interleaves_people() {
        let world = generate(&WorldConfig::default());
        let order = world.bio_order();
        let adjacent_same = order.windows(2).filter(|w| w[0].0 == w[1].0).count();
        // With 2000 people a shuffled order puts two bios of one person side by side rarely.
        assert!(adjacent_same < order.len() / 100, "{adjacent_same}");
        let firsts: HashSet<usize> = order[..20].iter().map(|x| x.0).collect();
        assert!(firsts.len() > 15);
        let covered: HashSet<(usize, usize)> = order.iter().copied().collect();
        assert_eq!(covered.len(), 2000 * 4);
    }

    #[test]
    fn biographies_are_plain_sentences_of_the_right_length() {
        let world = generate(&WorldConfig::default());
        let mut total = 0usize;
        let mut count = 0usize;
        for p in world.people() {
            for bio in &p.bios {
                let words = bio.split_whitespace().count();
                assert!((45..=120).contains(&words), "{words} words: {bio}");
                total += words;
                count += 1;
                assert!(bio.is_ascii());
                assert!(bio.ends_with('.'));
                assert!(!bio.contains("  ") && !bio.contains('{') && !bio.contains('}'));
                for sentence in bio.split(". ") {
                    assert!(
                        sentence.starts_with(|c: char| c.is_ascii_uppercase()),
                        "{bio}"
                    );
                }
            }
        }
        let mean = total as f64 / count as f64;
        assert!((60.0..=100.0).contains(&mean), "mean {mean} words");
    }

    #[test]
    fn pronouns_follow_the_first_name_pool() {
        let world = generate(&small(13));
        for p in world.people() {
            match p.pronouns {
                Pronouns::She => assert!(FEMALE_FIRST_NAMES.contains(&p.first)),
                Pronouns::He => assert!(MALE_FIRST_NAMES.contains(&p.first)),
            }
        }
        let she = world
            .people()
            .iter()
            .filter(|p| p.pronouns == Pronouns::She)
            .count();
        assert!((100..200).contains(&she), "{she}");
    }

    #[test]
    fn render_names_first_reference_then_uses_pronouns() {
        let world = generate(&small(1));
        let p = world.person(0);
        let name = p.full_name();
        let s = render_template("{P} parents welcomed {o} on {v}.", p, "May 1, 1950", true);
        assert_eq!(
            s,
            format!(
                "{name}'s parents welcomed {} on May 1, 1950.",
                p.pronouns.object()
            )
        );
        let s = render_template("{S} studied {v}.", p, "Law", false);
        assert_eq!(
            s,
            format!("{} studied Law.", capitalize(p.pronouns.subject()))
        );
        let s = render_template("{v} is where {s} works.", p, "the city", false);
        assert!(s.starts_with("The city is where"));
    }
}
