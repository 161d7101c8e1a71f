//! The synthetic world behind kiln's embedded default corpus: made-up people with six attributes
//! (birth date, birth city, university, major, employer, and the employer's city), several
//! biographies per person written from many sentence templates, and one question–answer pair per
//! attribute. In the spirit of the bioS data of Allen-Zhu & Li ("Physics of Language Models 3.1"):
//! every biography goes into raw pre-training text, the QA pairs of the "train" people go into
//! instruction-augmented records, and the QA pairs of the "held-out" people go only into the
//! evaluation files, so a model can be tested on knowledge it only ever saw stated in prose.
//!
//! What each file owns:
//! - `mod.rs`: the attributes, [`Attribute`], and [`ATTRIBUTES`], the one table of what is written
//!   about each: its key in the files, its biography sentence templates, its question phrasings and
//!   its cloze prefix. Generation and task writing both read it.
//! - `pools.rs`: the name, value, template and question pools, as data.
//! - `generate.rs`: the world as a pure function of [`WorldConfig`] (people, biographies, QA pairs,
//!   multiple-choice items, augmented records); nothing on disk.
//! - `files.rs`: the world on disk: [`write_world`] (`raw.jsonl`, `augmented.jsonl`, `eval.jsonl`,
//!   `eval_train.jsonl`, `world.json`), and [`ensure_world`], which builds whatever of a config's
//!   world is missing: those files, the task files `kiln eval` reads (`tasks/`), the tokenizer and
//!   the token shards.
//! - `experiment.rs`: `kiln experiment world`, the paper's claim in miniature on this world.
//! - `study.rs`: `kiln experiment world --study …`, the paper's open questions on it, over seeds.
//!
//! Layering: the world sits above train (its experiment trains models) and below the commands;
//! it imports neither `commands` nor `cli`, and nothing below it imports it.

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod experiment;
mod files;
mod generate;
pub mod pools;
mod study;

pub use files::{
    ensure_ablation_shards, ensure_world, write_world, LeftOut, WorldManifest, WorldSummary,
};
pub use generate::{
    generate, render_template, BirthDate, EvalItem, Person, Pronouns, Qa, World, WorldConfig,
    EVAL_OPTIONS, MAX_BIOS_PER_PERSON, MAX_PEOPLE, YEAR_RANGE,
};

/// The six attributes every person has. Serialised in snake case (`"birth_city"`), which is the
/// `key` of its row in [`ATTRIBUTES`].
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

/// What is written about one attribute.
pub struct AttributeSpec {
    pub attribute: Attribute,
    /// The snake-case key used in `eval.jsonl` and `world.json`.
    pub key: &'static str,
    /// Biography sentence templates (placeholders described at [`render_template`]).
    pub templates: &'static [&'static str],
    /// Question phrasings; `{n}` is the person's full name.
    pub questions: &'static [&'static str],
    /// What follows the person's name in a biography-style statement of the fact, before the value
    /// ("Ada Lee" + "was born in"): the prompt of the cloze task.
    pub cloze: &'static str,
}

/// The one table of attributes, in [`Attribute::ALL`] order.
pub static ATTRIBUTES: [AttributeSpec; 6] = [
    AttributeSpec {
        attribute: Attribute::BirthDate,
        key: "birth_date",
        templates: pools::BIRTH_DATE_TEMPLATES,
        questions: pools::BIRTH_DATE_QUESTIONS,
        cloze: "was born on",
    },
    AttributeSpec {
        attribute: Attribute::BirthCity,
        key: "birth_city",
        templates: pools::BIRTH_CITY_TEMPLATES,
        questions: pools::BIRTH_CITY_QUESTIONS,
        cloze: "was born in",
    },
    AttributeSpec {
        attribute: Attribute::University,
        key: "university",
        templates: pools::UNIVERSITY_TEMPLATES,
        questions: pools::UNIVERSITY_QUESTIONS,
        cloze: "studied at",
    },
    AttributeSpec {
        attribute: Attribute::Major,
        key: "major",
        templates: pools::MAJOR_TEMPLATES,
        questions: pools::MAJOR_QUESTIONS,
        cloze: "majored in",
    },
    AttributeSpec {
        attribute: Attribute::Employer,
        key: "employer",
        templates: pools::EMPLOYER_TEMPLATES,
        questions: pools::EMPLOYER_QUESTIONS,
        cloze: "works for",
    },
    AttributeSpec {
        attribute: Attribute::EmployerCity,
        key: "employer_city",
        templates: pools::EMPLOYER_CITY_TEMPLATES,
        questions: pools::EMPLOYER_CITY_QUESTIONS,
        cloze: "works in the city of",
    },
];

impl Attribute {
    pub const ALL: [Attribute; 6] = [
        Attribute::BirthDate,
        Attribute::BirthCity,
        Attribute::University,
        Attribute::Major,
        Attribute::Employer,
        Attribute::EmployerCity,
    ];

    /// This attribute's row of [`ATTRIBUTES`].
    pub fn spec(self) -> &'static AttributeSpec {
        &ATTRIBUTES[self as usize]
    }

    /// The attribute whose key is `key` (`"birth_city"`).
    pub fn from_key(key: &str) -> Option<Attribute> {
        ATTRIBUTES
            .iter()
            .find(|s| s.key == key)
            .map(|s| s.attribute)
    }

    /// The snake-case key used in `eval.jsonl`.
    pub fn as_str(self) -> &'static str {
        self.spec().key
    }

    /// The biography sentence templates for this attribute (see [`render_template`]).
    pub fn templates(self) -> &'static [&'static str] {
        self.spec().templates
    }

    /// The question phrasings for this attribute; `{n}` is the person's full name.
    pub fn questions(self) -> &'static [&'static str] {
        self.spec().questions
    }

    /// The cloze prompt's words between the person's name and the value ("was born in").
    pub fn cloze(self) -> &'static str {
        self.spec().cloze
    }
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::pools::*;
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn attribute_table_follows_all_and_the_serde_names() {
        assert_eq!(ATTRIBUTES.len(), Attribute::ALL.len());
        for (spec, attr) in ATTRIBUTES.iter().zip(Attribute::ALL) {
            assert_eq!(spec.attribute, attr);
            assert_eq!(attr.spec().key, spec.key);
            assert_eq!(Attribute::from_key(spec.key), Some(attr));
            assert_eq!(
                serde_json::to_value(attr).unwrap(),
                serde_json::Value::from(spec.key)
            );
            assert!(!spec.cloze.is_empty());
        }
        assert_eq!(Attribute::from_key("hobby"), None);
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
}
