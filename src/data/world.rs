//! The synthetic world behind kiln's embedded default corpus: made-up people with six attributes
//! (birth date, birth city, university, major, employer, and the employer's city), several
//! biographies per person written from many sentence templates, and one question–answer pair per
//! attribute. In the spirit of the bioS data of Allen-Zhu & Li ("Physics of Language Models 3.1"):
//! every biography goes into raw pre-training text, the QA pairs of the "train" people go into
//! instruction-augmented records, and the QA pairs of the "held-out" people go only into the
//! evaluation files, so a model can be tested on knowledge it only ever saw stated in prose.
//!
//! This module owns the world's generation (a pure function of [`WorldConfig`], driven by the
//! seeded [`Rng`]), its name/attribute/template pools, and the files `kiln world` writes
//! (`raw.jsonl`, `augmented.jsonl`, `eval.jsonl`, `eval_train.jsonl`, `world.json`).

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::records::{AugmentedRecord, Pair};
use crate::fsutil::write_atomic_with;
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

/// The six attributes every person has. Serialised in snake case (`"birth_city"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribute {
    BirthDate,
    BirthCity,
    University,
    Major,
    Employer,
    EmployerCity,
}

impl Attribute {
    pub const ALL: [Attribute; 6] = [
        Attribute::BirthDate,
        Attribute::BirthCity,
        Attribute::University,
        Attribute::Major,
        Attribute::Employer,
        Attribute::EmployerCity,
    ];

    /// The snake-case key used in `eval.jsonl`.
    pub fn as_str(self) -> &'static str {
        match self {
            Attribute::BirthDate => "birth_date",
            Attribute::BirthCity => "birth_city",
            Attribute::University => "university",
            Attribute::Major => "major",
            Attribute::Employer => "employer",
            Attribute::EmployerCity => "employer_city",
        }
    }

    /// The biography sentence templates for this attribute (see [`render_template`]).
    pub fn templates(self) -> &'static [&'static str] {
        match self {
            Attribute::BirthDate => BIRTH_DATE_TEMPLATES,
            Attribute::BirthCity => BIRTH_CITY_TEMPLATES,
            Attribute::University => UNIVERSITY_TEMPLATES,
            Attribute::Major => MAJOR_TEMPLATES,
            Attribute::Employer => EMPLOYER_TEMPLATES,
            Attribute::EmployerCity => EMPLOYER_CITY_TEMPLATES,
        }
    }

    /// The question phrasings for this attribute; `{n}` is the person's full name.
    pub fn questions(self) -> &'static [&'static str] {
        match self {
            Attribute::BirthDate => BIRTH_DATE_QUESTIONS,
            Attribute::BirthCity => BIRTH_CITY_QUESTIONS,
            Attribute::University => UNIVERSITY_QUESTIONS,
            Attribute::Major => MAJOR_QUESTIONS,
            Attribute::Employer => EMPLOYER_QUESTIONS,
            Attribute::EmployerCity => EMPLOYER_CITY_QUESTIONS,
        }
    }
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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

/// Counts and sizes of what [`write_world`] wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorldSummary {
    pub people: usize,
    pub train_people: usize,
    pub heldout_people: usize,
    /// Lines in `raw.jsonl`.
    pub biographies: usize,
    /// Lines in `augmented.jsonl`.
    pub augmented_records: usize,
    /// QA pairs summed over all augmented records.
    pub augmented_pairs: usize,
    /// Lines in `eval.jsonl` (held-out people).
    pub eval_items: usize,
    /// Lines in `eval_train.jsonl` (train people).
    pub eval_train_items: usize,
    pub raw_bytes: u64,
    pub augmented_bytes: u64,
    pub eval_bytes: u64,
    pub eval_train_bytes: u64,
}

/// `world.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorldManifest {
    pub config: WorldConfig,
    pub attributes: Vec<Attribute>,
    pub summary: WorldSummary,
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
        self.order
            .iter()
            .filter(|&&(p, _)| self.people[p].train)
            .map(|&(p, b)| {
                let person = &self.people[p];
                let index = (p * self.config.bios_per_person + b) as u64;
                let mut pairs: Vec<Pair> = person.qa.iter().map(Qa::to_pair).collect();
                stream(self.config.seed, STREAM_PAIRS, index).shuffle(&mut pairs);
                AugmentedRecord {
                    text: person.bios[b].clone(),
                    pairs,
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

// ---------------------------------------------------------------------------------------------
// Writing
// ---------------------------------------------------------------------------------------------

#[derive(Serialize)]
struct RawLine<'a> {
    text: &'a str,
}

/// Generates the world for `cfg` and writes its five files into `dir` (created if missing). Each
/// file is written to `<name>.tmp`, fsynced and renamed into place.
pub fn write_world(cfg: &WorldConfig, dir: &Path) -> io::Result<WorldSummary> {
    cfg.validate()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let world = generate(cfg);
    fs::create_dir_all(dir)?;

    let raw_bytes = write_jsonl(
        dir,
        "raw.jsonl",
        world.raw_texts().map(|text| RawLine { text }),
    )?;
    let records = world.augmented_records();
    let augmented_pairs = records.iter().map(|r| r.pairs.len()).sum();
    let augmented_bytes = write_jsonl(dir, "augmented.jsonl", records.iter())?;
    let eval_bytes = write_jsonl(dir, "eval.jsonl", world.eval_items(false))?;
    let eval_train_bytes = write_jsonl(dir, "eval_train.jsonl", world.eval_items(true))?;

    let train_people = world.train_people().count();
    let summary = WorldSummary {
        people: world.people.len(),
        train_people,
        heldout_people: world.people.len() - train_people,
        biographies: world.order.len(),
        augmented_records: records.len(),
        augmented_pairs,
        eval_items: world.eval_items(false).count(),
        eval_train_items: world.eval_items(true).count(),
        raw_bytes,
        augmented_bytes,
        eval_bytes,
        eval_train_bytes,
    };
    let manifest = WorldManifest {
        config: cfg.clone(),
        attributes: Attribute::ALL.to_vec(),
        summary: summary.clone(),
    };
    let mut json = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
    json.push(b'\n');
    write_atomic_with(&dir.join("world.json"), |w| w.write_all(&json))?;
    crate::fsutil::sync_parent(&dir.join("world.json"));
    Ok(summary)
}

/// Writes one JSON value per line; returns the bytes written.
fn write_jsonl<T: Serialize>(
    dir: &Path,
    name: &str,
    items: impl Iterator<Item = T>,
) -> io::Result<u64> {
    let mut bytes = 0u64;
    write_atomic_with(&dir.join(name), |w| {
        for item in items {
            let mut line = serde_json::to_vec(&item).map_err(io::Error::other)?;
            line.push(b'\n');
            w.write_all(&line)?;
            bytes += line.len() as u64;
        }
        Ok(())
    })?;
    Ok(bytes)
}

// ---------------------------------------------------------------------------------------------
// Data pools: calendar
// ---------------------------------------------------------------------------------------------

static MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

static DAYS_IN_MONTH: [u8; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

// ---------------------------------------------------------------------------------------------
// Data pools: biography sentence templates (placeholders described at `render_template`)
// ---------------------------------------------------------------------------------------------

pub static BIRTH_DATE_TEMPLATES: &[&str] = &[
    "{S} was born on {v}, and {s} still celebrates that date every year.",
    "{S} came into the world on {v}, the first day of a long story.",
    "{P} date of birth, as recorded on official documents, is {v}.",
    "The records of the local registry show that {s} was born on {v}.",
    "{S} first saw the light of day on {v}.",
    "{P} life began on {v}, a day {p} parents never forgot.",
    "According to family records, {s} was born on {v}.",
    "{S} was welcomed into the world on {v} by a happy family.",
    "{P} birth took place on {v}, as {p} passport confirms.",
    "On {v}, {s} was born, and {p} family celebrated the occasion.",
    "{P} birth certificate lists {v} as the date of birth.",
    "{S} arrived on {v}, much to the delight of {p} parents.",
    "{S} began {p} journey through life on {v}.",
    "Every year {s} marks {p} birthday, having been born on {v}.",
    "The day {s} was born was {v}, a date {s} likes to mention.",
    "{P} parents welcomed {o} on {v}, after a long wait.",
    "{S} was born on {v}, the date that appears on all of {p} papers.",
    "{S} traces the start of {p} life back to {v}.",
    "Born on {v}, {s} has always been fond of {p} birthday.",
    "{S} entered this world on {v}, in the early hours of the morning.",
    "Official papers state that {s} was born on {v}.",
    "{P} story starts on {v}, the day {s} was born.",
    "The date of {p} birth is {v}, according to the town hall.",
];

pub static BIRTH_CITY_TEMPLATES: &[&str] = &[
    "{S} was born in {v}, a city {s} still visits often.",
    "{S} spent {p} earliest days in {v}, the city of {p} birth.",
    "{P} birthplace is {v}, where {p} family lived at the time.",
    "{S} hails from {v}, the city where {s} was born.",
    "{S} is a native of {v} and was born there.",
    "{S} first opened {p} eyes in the city of {v}.",
    "{P} hometown is {v}, where {s} was born.",
    "The city of {v} is where {s} was born.",
    "{S} comes originally from {v}, the place of {p} birth.",
    "{P} roots lie in {v}, the city in which {s} was born.",
    "{S} was born in a small hospital in {v}.",
    "{v} is the city {s} names as {p} birthplace.",
    "{S} proudly lists {v} as {p} city of birth.",
    "{S} began {p} life in the city of {v}.",
    "{P} place of birth is {v}, as {p} records show.",
    "{S} drew {p} first breath in {v}.",
    "{S} was born in {v} and spent {p} childhood there.",
    "{S} considers {v} {p} home city, having been born there.",
    "Long before {p} career began, {s} was a small child in {v}, the city of {p} birth.",
    "{P} family welcomed {o} into the world in {v}.",
    "{S} was born in the busy city of {v}.",
    "When asked where {s} was born, {s} always answers {v}.",
    "{S} entered the world in {v}, a city {s} remembers fondly.",
];

pub static UNIVERSITY_TEMPLATES: &[&str] = &[
    "{S} studied at {v} for several years before starting work.",
    "{S} graduated with honors from {v}.",
    "{S} received {p} higher education at {v}, a place {s} remembers fondly.",
    "{S} attended {v} as a young adult.",
    "{S} completed {p} degree at {v} after years of hard work.",
    "{S} enrolled at {v} after finishing secondary school.",
    "{P} alma mater is {v}, a school {s} speaks of warmly.",
    "{S} spent {p} student years on the campus of {v}.",
    "{S} earned a degree from {v} and graduated on schedule.",
    "{S} pursued advanced studies at {v} for several years.",
    "{S} is a proud graduate of {v}.",
    "For {p} university education, {s} chose to enroll at {v}.",
    "{S} attended lectures and seminars at {v} as a student.",
    "{S} was a student at {v} for four busy years.",
    "{S} holds a diploma from {v}, which hangs on {p} wall.",
    "After secondary school, {s} went on to study at {v}.",
    "{S} did {p} undergraduate work at {v} with great dedication.",
    "{v} is where {s} received {p} academic training.",
    "{S} counts {v} as {p} alma mater and returns there for reunions.",
    "{S} spent several formative years studying at {v}.",
    "{P} university degree was awarded by {v}.",
    "{S} was educated at {v}, where {s} made many lifelong friends.",
    "{S} finished {p} studies at {v} and then started working.",
];

pub static MAJOR_TEMPLATES: &[&str] = &[
    "{S} majored in {v} during {p} time at university.",
    "{S} studied {v} as an undergraduate and enjoyed every course.",
    "{P} main field of study at university was {v}.",
    "{S} chose {v} as {p} major after some careful thought.",
    "{S} specialized in {v} during {p} years of study.",
    "{S} earned {p} degree in the field of {v}.",
    "{P} academic focus during college was {v}.",
    "{S} devoted {p} college years to the study of {v}.",
    "{S} concentrated on {v} while {s} was at university.",
    "{S} pursued a full course of study in {v}.",
    "{S} completed a major in {v} with strong grades.",
    "The subject {s} majored in at university was {v}.",
    "{S} received thorough academic training in {v}.",
    "{S} developed a deep interest in {v} and made it {p} major.",
    "{S} graduated with a degree in {v}.",
    "{P} major subject as a student was {v}.",
    "{S} spent {p} university years studying {v} in great detail.",
    "{S} took {v} as {p} main subject at university.",
    "{S} focused {p} studies on {v} from the very first year.",
    "In college, {s} majored in {v} and took many courses in it.",
    "{S} holds a university degree in {v}.",
    "{S} chose to study {v} in depth as a student.",
    "{v} was the discipline {s} pursued as a student.",
];

pub static EMPLOYER_TEMPLATES: &[&str] = &[
    "{S} works for {v} and enjoys the job.",
    "{S} is currently employed by a company called {v}.",
    "{S} has a full-time job at {v}.",
    "{P} employer is {v}, a company {s} joined years ago.",
    "{S} is on the staff of {v}.",
    "{S} earns a living working for {v}.",
    "{S} holds a steady position at {v}.",
    "{S} currently works at {v} alongside many colleagues.",
    "{S} is a valued member of the team at {v}.",
    "{S} draws {p} monthly salary from {v}.",
    "{S} joined {v} some years ago and still works there.",
    "{S} is part of the workforce at {v}.",
    "{P} current job is with {v}, and {s} likes it there.",
    "{S} is on the payroll of {v}.",
    "{v} employs {o} as a full-time staff member.",
    "{S} has built a long career at {v}.",
    "{S} spends {p} working days at the offices of {v}.",
    "Professionally, {s} is employed by {v}.",
    "{S} accepted a job at {v} and has stayed there ever since.",
    "{S} serves as an employee of {v}.",
    "{P} workplace is {v}, where {s} has many friends.",
    "These days {s} works for a company called {v}.",
    "The company {s} works for is {v}.",
];

pub static EMPLOYER_CITY_TEMPLATES: &[&str] = &[
    "{S} works in {v}, where {p} employer is based.",
    "{P} job is based in the city of {v}.",
    "{S} commutes to {p} workplace in {v} every morning.",
    "{S} is employed in the city of {v}.",
    "{P} office is located in {v}, close to the city center.",
    "{S} spends {p} working hours in {v}.",
    "{S} has made {p} career in the city of {v}.",
    "{P} workplace is in {v}, where {p} company is based.",
    "{S} reports every morning to an office in {v}.",
    "{S} works out of {v} for most of the year.",
    "{S} earns {p} living in the city of {v}.",
    "{P} employer is headquartered in {v}.",
    "{S} moved to {v} for work and has stayed there.",
    "{S} has a steady job in {v}.",
    "The city where {s} works is {v}.",
    "{S} practices {p} profession in {v}.",
    "{S} goes to work every day in {v}.",
    "{v} is the city where {s} works.",
    "{P} professional life is centered in {v}.",
    "{S} is based in {v} for {p} job.",
    "{S} pursues {p} career in the city of {v}.",
    "{P} company has its offices in {v}.",
    "{S} found work in {v} and settled into the job there.",
];

// ---------------------------------------------------------------------------------------------
// Data pools: question phrasings (`{n}` = full name)
// ---------------------------------------------------------------------------------------------

pub static BIRTH_DATE_QUESTIONS: &[&str] = &[
    "What is the birth date of {n}?",
    "When was {n} born?",
    "On what date was {n} born?",
    "What is {n}'s date of birth?",
    "On which day was {n} born?",
];

pub static BIRTH_CITY_QUESTIONS: &[&str] = &[
    "What is the birth city of {n}?",
    "Where was {n} born?",
    "In which city was {n} born?",
    "Which city is {n}'s birthplace?",
    "What city does {n} come from originally?",
];

pub static UNIVERSITY_QUESTIONS: &[&str] = &[
    "Which university did {n} attend?",
    "Where did {n} study?",
    "What university did {n} graduate from?",
    "Which university is {n}'s alma mater?",
    "At which university was {n} educated?",
];

pub static MAJOR_QUESTIONS: &[&str] = &[
    "What did {n} major in?",
    "What was {n}'s major?",
    "Which field did {n} study?",
    "What subject did {n} study at university?",
    "What is {n}'s field of study?",
];

pub static EMPLOYER_QUESTIONS: &[&str] = &[
    "Which company does {n} work for?",
    "Who employs {n}?",
    "What is the name of {n}'s employer?",
    "For which company does {n} work?",
    "Which company employs {n}?",
];

pub static EMPLOYER_CITY_QUESTIONS: &[&str] = &[
    "In which city does {n} work?",
    "Where is {n}'s employer located?",
    "Which city does {n} work in?",
    "What city is {n}'s workplace in?",
    "In what city is {n}'s employer based?",
];

// ---------------------------------------------------------------------------------------------
// Data pools: names
// ---------------------------------------------------------------------------------------------

pub static FEMALE_FIRST_NAMES: &[&str] = &[
    "Abigail",
    "Ada",
    "Adele",
    "Agnes",
    "Alice",
    "Alma",
    "Amara",
    "Amelia",
    "Anita",
    "Anna",
    "Astrid",
    "Aurora",
    "Beatrice",
    "Bella",
    "Bianca",
    "Brenda",
    "Bridget",
    "Camille",
    "Carla",
    "Carmen",
    "Caroline",
    "Cecilia",
    "Celeste",
    "Chloe",
    "Clara",
    "Claudia",
    "Cora",
    "Daisy",
    "Daphne",
    "Delia",
    "Diana",
    "Dolores",
    "Dora",
    "Edith",
    "Eleanor",
    "Elena",
    "Eliza",
    "Ella",
    "Eloise",
    "Elsa",
    "Emma",
    "Esther",
    "Eva",
    "Evelyn",
    "Faith",
    "Fatima",
    "Fiona",
    "Flora",
    "Frances",
    "Freya",
    "Gemma",
    "Georgia",
    "Gloria",
    "Grace",
    "Greta",
    "Hannah",
    "Harriet",
    "Hazel",
    "Helen",
    "Hilda",
    "Ida",
    "Imogen",
    "Ingrid",
    "Irene",
    "Iris",
    "Isabel",
    "Ivy",
    "Jane",
    "Janet",
    "Jasmine",
    "Joan",
    "Josephine",
    "Judith",
    "Julia",
    "June",
    "Karen",
    "Katrina",
    "Laura",
    "Leah",
    "Leila",
    "Lena",
    "Lillian",
    "Linda",
    "Lucia",
    "Lydia",
    "Mabel",
    "Maeve",
    "Margaret",
    "Maria",
    "Marina",
    "Martha",
    "Maya",
    "Mildred",
    "Miriam",
    "Molly",
    "Nadia",
    "Naomi",
    "Natalie",
    "Nina",
    "Nora",
    "Olive",
    "Olivia",
    "Paula",
    "Pearl",
    "Penelope",
    "Phoebe",
    "Priya",
    "Rachel",
    "Rebecca",
    "Rosa",
    "Rosalind",
    "Ruth",
    "Sabrina",
    "Sara",
    "Selma",
    "Sofia",
    "Stella",
    "Susan",
    "Sylvia",
    "Tamara",
    "Thea",
    "Una",
    "Ursula",
    "Vera",
    "Victoria",
    "Violet",
    "Wanda",
    "Wilma",
    "Yara",
    "Yvonne",
    "Zara",
    "Zoe",
];

pub static MALE_FIRST_NAMES: &[&str] = &[
    "Aaron",
    "Abel",
    "Adrian",
    "Albert",
    "Alfred",
    "Amos",
    "Andrew",
    "Anton",
    "Arthur",
    "Barnaby",
    "Basil",
    "Benedict",
    "Bernard",
    "Boris",
    "Bruno",
    "Caleb",
    "Carl",
    "Cedric",
    "Charles",
    "Clement",
    "Colin",
    "Conrad",
    "Cyrus",
    "Damian",
    "Daniel",
    "David",
    "Declan",
    "Dennis",
    "Desmond",
    "Dominic",
    "Duncan",
    "Edgar",
    "Edmund",
    "Edward",
    "Elias",
    "Elliot",
    "Emil",
    "Ernest",
    "Ethan",
    "Eugene",
    "Felix",
    "Fergus",
    "Francis",
    "Frank",
    "Frederick",
    "Gabriel",
    "Gareth",
    "George",
    "Gerald",
    "Gideon",
    "Gordon",
    "Gregory",
    "Hamish",
    "Harold",
    "Hector",
    "Henry",
    "Hugo",
    "Ian",
    "Isaac",
    "Ivan",
    "Jacob",
    "James",
    "Jasper",
    "Jerome",
    "Joel",
    "Jonah",
    "Joseph",
    "Julian",
    "Kenneth",
    "Kevin",
    "Laurence",
    "Leo",
    "Leon",
    "Lewis",
    "Lionel",
    "Lucas",
    "Magnus",
    "Malcolm",
    "Marcus",
    "Martin",
    "Matthew",
    "Maurice",
    "Milo",
    "Mohammed",
    "Nathan",
    "Neil",
    "Nicholas",
    "Noah",
    "Norman",
    "Oliver",
    "Omar",
    "Oscar",
    "Otto",
    "Owen",
    "Patrick",
    "Paul",
    "Peter",
    "Philip",
    "Quentin",
    "Ralph",
    "Raymond",
    "Reuben",
    "Richard",
    "Robert",
    "Roland",
    "Rupert",
    "Samuel",
    "Sebastian",
    "Simon",
    "Stanley",
    "Stephen",
    "Theodore",
    "Thomas",
    "Timothy",
    "Tobias",
    "Victor",
    "Vincent",
    "Walter",
    "Warren",
    "Wesley",
    "Xavier",
    "Yusuf",
    "Zachary",
];

/// Middle names; neutral enough to follow either pool of first names.
pub static MIDDLE_NAMES: &[&str] = &[
    "Alder", "Ash", "Avery", "Bay", "Blair", "Brook", "Cameron", "Carey", "Casey", "Cedar", "Dale",
    "Dana", "Drew", "Eden", "Ellis", "Emery", "Ever", "Finley", "Flynn", "Frost", "Gale", "Glen",
    "Gray", "Harper", "Hayden", "Hollis", "Hunter", "Indigo", "Jade", "Jordan", "Jules", "Kai",
    "Kendall", "Kit", "Lane", "Lee", "Logan", "Lynn", "Marlow", "Merritt", "Morgan", "Noel",
    "Oakley", "Parker", "Paige", "Perry", "Quinn", "Rae", "Reese", "Remy", "Riley", "River",
    "Robin", "Rowan", "Sage", "Sawyer", "Shay", "Sky", "Sloan", "Storm", "Sutton", "Tate",
    "Taylor", "Terry", "Vale", "Wren", "Wynn", "Yael",
];

pub static LAST_NAMES: &[&str] = &[
    "Abbott",
    "Acosta",
    "Adler",
    "Ahmed",
    "Ainsworth",
    "Albright",
    "Aldridge",
    "Alvarez",
    "Andersen",
    "Ashby",
    "Atwood",
    "Bailey",
    "Baker",
    "Banerjee",
    "Barlow",
    "Barrett",
    "Baxter",
    "Beckett",
    "Bellamy",
    "Bennett",
    "Bishop",
    "Blackwood",
    "Blake",
    "Bowen",
    "Bradford",
    "Brennan",
    "Briggs",
    "Brooks",
    "Burke",
    "Calloway",
    "Campbell",
    "Carver",
    "Castillo",
    "Chandler",
    "Chen",
    "Clarke",
    "Coleman",
    "Collins",
    "Conway",
    "Cooper",
    "Crawford",
    "Cruz",
    "Dalton",
    "Davies",
    "Delgado",
    "Dempsey",
    "Dixon",
    "Doyle",
    "Drummond",
    "Duarte",
    "Dunn",
    "Easton",
    "Ellison",
    "Emerson",
    "Evans",
    "Fairbanks",
    "Farrell",
    "Fenwick",
    "Ferreira",
    "Finch",
    "Fischer",
    "Fleming",
    "Fletcher",
    "Forbes",
    "Foster",
    "Fowler",
    "Fraser",
    "Gallagher",
    "Garcia",
    "Garner",
    "Gibson",
    "Goldberg",
    "Gomez",
    "Graham",
    "Grant",
    "Greer",
    "Griffin",
    "Gupta",
    "Hadley",
    "Halvorsen",
    "Hammond",
    "Hancock",
    "Hardy",
    "Harlow",
    "Hartley",
    "Hawkins",
    "Hayes",
    "Heller",
    "Hendricks",
    "Holloway",
    "Horton",
    "Huang",
    "Hughes",
    "Hutchinson",
    "Ibarra",
    "Ingram",
    "Iwasaki",
    "Jacobs",
    "Jansen",
    "Jarvis",
    "Jenkins",
    "Jensen",
    "Kaplan",
    "Keane",
    "Keller",
    "Kennedy",
    "Kimura",
    "Kingsley",
    "Kirby",
    "Kovac",
    "Kowalski",
    "Lambert",
    "Landry",
    "Larsen",
    "Lawson",
    "Lindqvist",
    "Lopez",
    "Lowell",
    "Lucero",
    "Lynch",
    "Macintyre",
    "Madsen",
    "Maguire",
    "Mahoney",
    "Marsh",
    "Mathis",
    "Mendoza",
    "Mercer",
    "Meyer",
    "Molina",
    "Monroe",
    "Morales",
    "Moreau",
    "Morrison",
    "Murakami",
    "Nakamura",
    "Nash",
    "Navarro",
    "Nielsen",
    "Novak",
    "Oakes",
    "Ochoa",
    "Okafor",
    "Oliveira",
    "Osborne",
    "Owens",
    "Padilla",
    "Palmer",
    "Park",
    "Parsons",
    "Patel",
    "Pearson",
    "Pemberton",
    "Perez",
    "Petrov",
    "Pierce",
    "Porter",
    "Prescott",
    "Quinlan",
    "Radcliffe",
    "Ramirez",
    "Ramsey",
    "Reyes",
    "Rhodes",
    "Richter",
    "Rivera",
    "Rossi",
    "Russo",
    "Salazar",
    "Sampson",
    "Sandoval",
    "Santos",
    "Sato",
    "Schmidt",
    "Schneider",
    "Sellers",
    "Shah",
    "Shelby",
    "Sheridan",
    "Silva",
    "Sinclair",
    "Singh",
    "Sloane",
    "Soto",
    "Spencer",
    "Stanton",
    "Sterling",
    "Stone",
    "Sullivan",
    "Suzuki",
    "Sutherland",
    "Tanaka",
    "Thornton",
    "Torres",
    "Townsend",
    "Tran",
    "Tucker",
    "Turner",
    "Underwood",
    "Valdez",
    "Vance",
    "Vargas",
    "Vasquez",
    "Vaughn",
    "Voss",
    "Wagner",
    "Walsh",
    "Ward",
    "Warner",
    "Watanabe",
    "Webb",
    "Weber",
    "Whitaker",
    "Whitfield",
    "Wilder",
    "Winslow",
    "Wolfe",
    "Wong",
    "Woodward",
    "Wright",
    "Yamamoto",
    "Yates",
    "Young",
    "Zamora",
    "Zhang",
    "Ziegler",
    "Zimmerman",
];

// ---------------------------------------------------------------------------------------------
// Data pools: attribute values
// ---------------------------------------------------------------------------------------------

pub static CITIES: &[&str] = &[
    "Boston",
    "Chicago",
    "Denver",
    "Seattle",
    "Portland",
    "Austin",
    "Dallas",
    "Houston",
    "Phoenix",
    "Atlanta",
    "Miami",
    "Detroit",
    "Cleveland",
    "Pittsburgh",
    "Baltimore",
    "Philadelphia",
    "Minneapolis",
    "Milwaukee",
    "Nashville",
    "Memphis",
    "New Orleans",
    "San Diego",
    "Sacramento",
    "Salt Lake City",
    "Albuquerque",
    "Tucson",
    "Omaha",
    "Kansas City",
    "Indianapolis",
    "Columbus",
    "Cincinnati",
    "Louisville",
    "Charlotte",
    "Raleigh",
    "Richmond",
    "Buffalo",
    "Hartford",
    "Providence",
    "Toronto",
    "Montreal",
    "Vancouver",
    "Calgary",
    "Ottawa",
    "Winnipeg",
    "Halifax",
    "Edmonton",
    "Mexico City",
    "Guadalajara",
    "Monterrey",
    "Havana",
    "Bogota",
    "Lima",
    "Quito",
    "Santiago",
    "Buenos Aires",
    "Montevideo",
    "Sao Paulo",
    "Rio de Janeiro",
    "Caracas",
    "London",
    "Manchester",
    "Liverpool",
    "Edinburgh",
    "Glasgow",
    "Dublin",
    "Cardiff",
    "Belfast",
    "Paris",
    "Lyon",
    "Marseille",
    "Bordeaux",
    "Brussels",
    "Amsterdam",
    "Rotterdam",
    "Berlin",
    "Hamburg",
    "Munich",
    "Frankfurt",
    "Cologne",
    "Vienna",
    "Zurich",
    "Geneva",
    "Milan",
    "Rome",
    "Naples",
    "Turin",
    "Madrid",
    "Barcelona",
    "Valencia",
    "Seville",
    "Lisbon",
    "Porto",
    "Copenhagen",
    "Stockholm",
    "Oslo",
    "Helsinki",
    "Warsaw",
    "Krakow",
    "Prague",
    "Budapest",
    "Athens",
    "Istanbul",
    "Cairo",
    "Nairobi",
    "Lagos",
    "Accra",
    "Cape Town",
    "Johannesburg",
    "Casablanca",
    "Tunis",
    "Dubai",
    "Mumbai",
    "Delhi",
    "Bangalore",
    "Chennai",
    "Kolkata",
    "Karachi",
    "Dhaka",
    "Bangkok",
    "Hanoi",
    "Singapore",
    "Kuala Lumpur",
    "Jakarta",
    "Manila",
    "Seoul",
    "Busan",
    "Tokyo",
    "Osaka",
    "Kyoto",
    "Beijing",
    "Shanghai",
    "Taipei",
    "Sydney",
    "Melbourne",
    "Brisbane",
    "Perth",
    "Auckland",
    "Wellington",
];

pub static UNIVERSITIES: &[&str] = &[
    "University of Toronto",
    "McGill University",
    "University of British Columbia",
    "Harvard University",
    "Yale University",
    "Princeton University",
    "Columbia University",
    "Cornell University",
    "Brown University",
    "Dartmouth College",
    "Stanford University",
    "University of Chicago",
    "Duke University",
    "Rice University",
    "Emory University",
    "Vanderbilt University",
    "Tufts University",
    "Northwestern University",
    "Georgetown University",
    "Boston University",
    "Purdue University",
    "Rutgers University",
    "Tulane University",
    "Baylor University",
    "Clemson University",
    "Auburn University",
    "Temple University",
    "Drexel University",
    "Fordham University",
    "Syracuse University",
    "Villanova University",
    "Brandeis University",
    "Carnegie Mellon University",
    "Johns Hopkins University",
    "New York University",
    "Ohio State University",
    "Penn State University",
    "Michigan State University",
    "Arizona State University",
    "Iowa State University",
    "University of Michigan",
    "University of Virginia",
    "University of Florida",
    "University of Texas",
    "University of Washington",
    "University of Oregon",
    "University of Utah",
    "University of Arizona",
    "University of Colorado",
    "University of Minnesota",
    "University of Wisconsin",
    "University of Illinois",
    "University of Iowa",
    "University of Kansas",
    "University of Georgia",
    "University of Maryland",
    "University of Rochester",
    "University of Pittsburgh",
    "University of Notre Dame",
    "University of Vermont",
    "University of Oxford",
    "University of Cambridge",
    "University of Edinburgh",
    "University of Glasgow",
    "University of Manchester",
    "University of Bristol",
    "University of Leeds",
    "University of Warwick",
    "University of Sheffield",
    "Durham University",
    "Trinity College Dublin",
    "Imperial College London",
    "King's College London",
    "University of Amsterdam",
    "Leiden University",
    "Utrecht University",
    "Heidelberg University",
    "University of Vienna",
    "University of Zurich",
    "University of Geneva",
    "Sorbonne University",
    "University of Bologna",
    "University of Padua",
    "University of Barcelona",
    "University of Lisbon",
    "University of Copenhagen",
    "Uppsala University",
    "Lund University",
    "University of Oslo",
    "University of Helsinki",
    "Charles University",
    "University of Warsaw",
    "University of Tokyo",
    "Kyoto University",
    "Seoul National University",
    "Peking University",
    "Tsinghua University",
    "National University of Singapore",
    "University of Melbourne",
    "University of Sydney",
    "Monash University",
    "University of Auckland",
    "University of Cape Town",
    "University of Nairobi",
    "University of Buenos Aires",
    "University of Chile",
];

pub static MAJORS: &[&str] = &[
    "Accounting",
    "Aerospace Engineering",
    "African Studies",
    "Agricultural Science",
    "Animal Science",
    "Anthropology",
    "Applied Mathematics",
    "Archaeology",
    "Architecture",
    "Art History",
    "Astronomy",
    "Biochemistry",
    "Bioengineering",
    "Biology",
    "Biomedical Engineering",
    "Biophysics",
    "Botany",
    "Business Administration",
    "Chemical Engineering",
    "Chemistry",
    "Civil Engineering",
    "Classics",
    "Cognitive Science",
    "Communications",
    "Comparative Literature",
    "Computer Engineering",
    "Computer Science",
    "Creative Writing",
    "Criminology",
    "Dance",
    "Data Science",
    "Dentistry",
    "Econometrics",
    "Economics",
    "Education",
    "Electrical Engineering",
    "English Literature",
    "Environmental Science",
    "Film Studies",
    "Finance",
    "Fine Arts",
    "Forestry",
    "French",
    "Genetics",
    "Geography",
    "Geology",
    "German",
    "Graphic Design",
    "History",
    "Hospitality Management",
    "Industrial Design",
    "Information Systems",
    "International Relations",
    "Journalism",
    "Kinesiology",
    "Law",
    "Linguistics",
    "Marine Biology",
    "Marketing",
    "Materials Science",
    "Mathematics",
    "Mechanical Engineering",
    "Medicine",
    "Meteorology",
    "Microbiology",
    "Music",
    "Music Composition",
    "Neuroscience",
    "Nuclear Engineering",
    "Nursing",
    "Nutrition",
    "Oceanography",
    "Pharmacology",
    "Philosophy",
    "Photography",
    "Physics",
    "Political Science",
    "Psychology",
    "Public Health",
    "Religious Studies",
    "Robotics",
    "Sociology",
    "Spanish",
    "Statistics",
    "Theater",
    "Urban Planning",
    "Veterinary Science",
    "Zoology",
];

/// Employers, each with the one city it is based in (a member of [`CITIES`]).
pub static EMPLOYERS: &[(&str, &str)] = &[
    ("Northwind Freight", "Chicago"),
    ("Bluefin Analytics", "Boston"),
    ("Copperleaf Bank", "Toronto"),
    ("Silverline Rail", "Denver"),
    ("Harborview Shipping", "Rotterdam"),
    ("Evergreen Timber", "Portland"),
    ("Redstone Mining", "Johannesburg"),
    ("Lanternfish Games", "Montreal"),
    ("Quillstone Publishing", "London"),
    ("Brightwater Utilities", "Seattle"),
    ("Amberfield Foods", "Omaha"),
    ("Ironbridge Construction", "Pittsburgh"),
    ("Skyward Airlines", "Atlanta"),
    ("Meadowlark Insurance", "Hartford"),
    ("Cobalt Semiconductors", "Taipei"),
    ("Tidewater Energy", "Houston"),
    ("Falconcrest Security", "Dallas"),
    ("Juniper Health", "Minneapolis"),
    ("Saltmarsh Fisheries", "Halifax"),
    ("Granite Peak Outfitters", "Salt Lake City"),
    ("Velvet Loom Textiles", "Milan"),
    ("Orchid Pharmaceuticals", "Zurich"),
    ("Sunspire Solar", "Phoenix"),
    ("Kestrel Robotics", "Munich"),
    ("Driftwood Hotels", "Miami"),
    ("Pinecone Software", "Vancouver"),
    ("Marigold Cosmetics", "Paris"),
    ("Stonegate Capital", "Frankfurt"),
    ("Windmere Turbines", "Copenhagen"),
    ("Crescent Moon Bakeries", "Lyon"),
    ("Polaris Telecom", "Stockholm"),
    ("Glacier Water Company", "Calgary"),
    ("Harvest Table Grocers", "Kansas City"),
    ("Beacon Street Media", "Boston"),
    ("Obsidian Motors", "Detroit"),
    ("Thistle Distillers", "Edinburgh"),
    ("Shamrock Dairies", "Dublin"),
    ("Riverbend Paper Mills", "Milwaukee"),
    ("Lighthouse Logistics", "Singapore"),
    ("Jade Dragon Electronics", "Shanghai"),
    ("Cherry Blossom Rail", "Osaka"),
    ("Lotus Textiles", "Mumbai"),
    ("Tigerlily Biotech", "Bangalore"),
    ("Monsoon Airways", "Bangkok"),
    ("Coral Reef Tours", "Brisbane"),
    ("Kiwi Orchards", "Auckland"),
    ("Southern Cross Mining", "Perth"),
    ("Harbourside Ferries", "Sydney"),
    ("Laneway Coffee Roasters", "Melbourne"),
    ("Andes Copper", "Santiago"),
    ("Pampas Cattle Company", "Buenos Aires"),
    ("Amazonia Timber", "Sao Paulo"),
    ("Carnival Records", "Rio de Janeiro"),
    ("Aztec Cement", "Monterrey"),
    ("Sierra Agave Works", "Guadalajara"),
    ("Condor Airlines", "Lima"),
    ("Equator Coffee Traders", "Bogota"),
    ("Sahara Solar Farms", "Casablanca"),
    ("Nile Valley Cotton", "Cairo"),
    ("Savannah Telecom", "Nairobi"),
    ("Gulf Star Petroleum", "Dubai"),
    ("Bosphorus Shipyards", "Istanbul"),
    ("Acropolis Marble", "Athens"),
    ("Vltava Glassworks", "Prague"),
    ("Danube Steel", "Budapest"),
    ("Vistula Chemicals", "Warsaw"),
    ("Northern Lights Gaming", "Helsinki"),
    ("Fjordline Cruises", "Oslo"),
    ("Alpine Precision Watches", "Geneva"),
    ("Edelweiss Bank", "Zurich"),
    ("Ringstrasse Opera House", "Vienna"),
    ("Rhine Valley Chemicals", "Cologne"),
    ("Hanseatic Trading House", "Hamburg"),
    ("Spree Digital", "Berlin"),
    ("Canal House Design", "Amsterdam"),
    ("Atomium Consulting", "Brussels"),
    ("Garonne Vineyards", "Bordeaux"),
    ("Calanque Seafoods", "Marseille"),
    ("Iberian Power", "Madrid"),
    ("Gaudi Architecture Studio", "Barcelona"),
    ("Orange Grove Exports", "Valencia"),
    ("Tagus Shipping", "Lisbon"),
    ("Douro Port Wines", "Porto"),
    ("Vesuvius Ceramics", "Naples"),
    ("Colosseum Travel", "Rome"),
    ("Mole Automotive", "Turin"),
    ("Clydeside Engineering", "Glasgow"),
    ("Mersey Sound Studios", "Liverpool"),
    ("Cottonopolis Mills", "Manchester"),
    ("Dragonstone Slate", "Cardiff"),
    ("Titanic Quarter Shipbuilders", "Belfast"),
    ("Maple Leaf Aerospace", "Montreal"),
    ("Prairie Grain Cooperative", "Winnipeg"),
    ("Parliament Hill Consulting", "Ottawa"),
    ("Oilsands Energy", "Edmonton"),
    ("Bayou Shipping", "New Orleans"),
    ("Music Row Records", "Nashville"),
    ("Blues City Barbecue", "Memphis"),
    ("Desert Bloom Nurseries", "Tucson"),
    ("Turquoise Mesa Labs", "Albuquerque"),
    ("Golden Bear Orchards", "Sacramento"),
    ("Pacific Tide Biotech", "San Diego"),
    ("Lone Star Semiconductors", "Austin"),
    ("Peachtree Media", "Atlanta"),
    ("Queen City Bank", "Charlotte"),
    ("Research Triangle Labs", "Raleigh"),
    ("James River Tobacco", "Richmond"),
    ("Lakeshore Steel", "Cleveland"),
    ("Buckeye Insurance", "Columbus"),
    ("Riverfront Brewing", "Cincinnati"),
    ("Bluegrass Stables", "Louisville"),
    ("Speedway Motors", "Indianapolis"),
    ("Inner Harbor Seafood", "Baltimore"),
    ("Liberty Bell Publishing", "Philadelphia"),
    ("Niagara Power", "Buffalo"),
    ("Ocean State Jewelers", "Providence"),
    ("Han River Electronics", "Seoul"),
    ("Haeundae Shipping", "Busan"),
    ("Shinkansen Components", "Tokyo"),
    ("Temple Garden Tea", "Kyoto"),
    ("Forbidden City Software", "Beijing"),
    ("Red River Silk", "Hanoi"),
    ("Klang Valley Finance", "Kuala Lumpur"),
    ("Spice Island Trading", "Jakarta"),
    ("Pearl of the Orient Foods", "Manila"),
    ("Bengal Jute Works", "Kolkata"),
    ("Marina Beach Textiles", "Chennai"),
    ("Capital Gate Holdings", "Delhi"),
    ("Indus Cotton Mills", "Karachi"),
    ("Padma River Garments", "Dhaka"),
    ("Gold Coast Cocoa", "Accra"),
    ("Niger Delta Energy", "Lagos"),
    ("Table Mountain Wines", "Cape Town"),
    ("Medina Carpets", "Tunis"),
    ("Cuban Cigar Company", "Havana"),
    ("Orinoco Oil", "Caracas"),
    ("Rambla Fisheries", "Montevideo"),
    ("Volcano Flowers", "Quito"),
    ("Zocalo Media", "Mexico City"),
    ("Windy Harbor Consulting", "Wellington"),
    ("Rainier Outdoor Gear", "Seattle"),
    ("Harbor Point Logistics", "San Diego"),
    ("Stockyard Meats", "Omaha"),
    ("Pike Place Grocers", "Seattle"),
    ("Seine River Fashion", "Paris"),
    ("Canary Wharf Securities", "London"),
    ("Thames Valley Robotics", "London"),
];

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;

    fn small(seed: u64) -> WorldConfig {
        WorldConfig {
            seed,
            people: 300,
            bios_per_person: 5,
            train_fraction: 0.5,
        }
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new(tag: &str) -> Self {
            let p =
                std::env::temp_dir().join(format!("kiln-world-test-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            TempDir(p)
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const FILES: [&str; 5] = [
        "raw.jsonl",
        "augmented.jsonl",
        "eval.jsonl",
        "eval_train.jsonl",
        "world.json",
    ];

    fn read_all(dir: &Path) -> Vec<Vec<u8>> {
        FILES
            .iter()
            .map(|f| fs::read(dir.join(f)).unwrap())
            .collect()
    }

    #[test]
    fn same_seed_gives_byte_identical_files_and_other_seed_differs() {
        let (a, b, c) = (TempDir::new("a"), TempDir::new("b"), TempDir::new("c"));
        let sa = write_world(&small(11), &a.0).unwrap();
        let sb = write_world(&small(11), &b.0).unwrap();
        write_world(&small(12), &c.0).unwrap();
        assert_eq!(sa, sb);
        let (fa, fb, fc) = (read_all(&a.0), read_all(&b.0), read_all(&c.0));
        assert_eq!(fa, fb);
        for i in 0..4 {
            assert_ne!(fa[i], fc[i], "{} did not change with the seed", FILES[i]);
        }
        // No temporary files left behind.
        for entry in fs::read_dir(&a.0).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(FILES.contains(&name.as_str()), "stray file {name}");
        }
        assert_eq!(generate(&small(11)), generate(&small(11)));
    }

    #[test]
    fn files_parse_and_counts_match_summary() {
        let dir = TempDir::new("counts");
        let cfg = small(5);
        let s = write_world(&cfg, &dir.0).unwrap();
        let text = |f: &str| fs::read_to_string(dir.0.join(f)).unwrap();
        let raw: Vec<serde_json::Value> = text("raw.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(raw.len(), cfg.people * cfg.bios_per_person);
        assert!(raw.iter().all(|v| v["text"].is_string()));
        let aug: Vec<AugmentedRecord> = text("augmented.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let eval: Vec<EvalItem> = text("eval.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let eval_train: Vec<EvalItem> = text("eval_train.jsonl")
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(s.people, cfg.people);
        assert_eq!(s.train_people, 150);
        assert_eq!(s.heldout_people, 150);
        assert_eq!(s.biographies, raw.len());
        assert_eq!(s.augmented_records, aug.len());
        assert_eq!(s.augmented_records, 150 * cfg.bios_per_person);
        assert_eq!(
            s.augmented_pairs,
            aug.iter().map(|r| r.pairs.len()).sum::<usize>()
        );
        assert_eq!(s.eval_items, eval.len());
        assert_eq!(s.eval_items, 150 * Attribute::ALL.len());
        assert_eq!(s.eval_train_items, eval_train.len());
        assert_eq!(
            s.raw_bytes,
            fs::metadata(dir.0.join("raw.jsonl")).unwrap().len()
        );
        assert!(aug.iter().all(|r| r.chain.is_none() && !r.pairs.is_empty()));
        let manifest: WorldManifest = serde_json::from_str(&text("world.json")).unwrap();
        assert_eq!(manifest.config, cfg);
        assert_eq!(manifest.summary, s);
        // Raw text lines say "text" and nothing else.
        let first = text("raw.jsonl").lines().next().unwrap().to_string();
        assert!(first.starts_with("{\"text\":\""), "{first}");
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
    fn pools_are_large_distinct_and_templates_are_many() {
        for attr in Attribute::ALL {
            assert!(attr.templates().len() >= 20, "{attr}: too few templates");
            assert!(attr.questions().len() >= 4, "{attr}: too few questions");
            let distinct: HashSet<&&str> = attr.templates().iter().collect();
            assert_eq!(distinct.len(), attr.templates().len(), "{attr}: duplicates");
            for t in attr.templates() {
                assert_eq!(t.matches("{v}").count(), 1, "{t}");
                assert!(t.ends_with('.'), "{t}");
                assert!(
                    ["{S}", "{s}", "{P}", "{p}", "{o}"]
                        .iter()
                        .any(|k| t.contains(k)),
                    "{t} never refers to the person"
                );
            }
            for q in attr.questions() {
                assert!(q.contains("{n}") && q.ends_with('?'), "{q}");
            }
        }
        let check = |name: &str, pool: &[&str], min: usize| {
            assert!(pool.len() >= min, "{name}: {} < {min}", pool.len());
            let distinct: HashSet<&&str> = pool.iter().collect();
            assert_eq!(distinct.len(), pool.len(), "{name} has duplicates");
        };
        check("CITIES", CITIES, 100);
        check("UNIVERSITIES", UNIVERSITIES, 100);
        check("MAJORS", MAJORS, 80);
        let employers: Vec<&str> = EMPLOYERS.iter().map(|e| e.0).collect();
        check("EMPLOYERS", &employers, 100);
        check("FEMALE_FIRST_NAMES", FEMALE_FIRST_NAMES, 100);
        check("MALE_FIRST_NAMES", MALE_FIRST_NAMES, 100);
        check("MIDDLE_NAMES", MIDDLE_NAMES, 60);
        check("LAST_NAMES", LAST_NAMES, 200);
        let mut firsts: Vec<&str> = FEMALE_FIRST_NAMES.to_vec();
        firsts.extend_from_slice(MALE_FIRST_NAMES);
        check("first names", &firsts, 200);
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

    #[test]
    fn invalid_configs_are_rejected() {
        let bad = [
            WorldConfig {
                bios_per_person: 0,
                ..WorldConfig::default()
            },
            WorldConfig {
                train_fraction: 1.5,
                ..WorldConfig::default()
            },
            WorldConfig {
                train_fraction: f64::NAN,
                ..WorldConfig::default()
            },
            WorldConfig {
                people: MAX_PEOPLE + 1,
                ..WorldConfig::default()
            },
        ];
        for cfg in bad {
            assert!(cfg.validate().is_err());
            let dir = TempDir::new("bad");
            let err = write_world(&cfg, &dir.0).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
        assert!(WorldConfig::default().validate().is_ok());
        let empty = generate(&WorldConfig {
            people: 0,
            ..WorldConfig::default()
        });
        assert!(empty.people().is_empty());
    }
}
