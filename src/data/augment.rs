//! Templating of instruction-augmented texts: parses the synthesizer's in-string encoding of a pair
//! (plain, multiple choice, chain of thought, both) and renders one synthesis chain into natural
//! pre-training documents, following Instruct PT (Cheng et al. 2024): the raw text stays verbatim,
//! each document draws one layout (Classic, Dialog, Numbered questions, Inline few-shot, Next-turn
//! dialog), optionally puts the pairs before the text, uses one pattern per pair type for all its
//! shots, and shuffles and relabels multiple-choice options. Every choice comes from its own
//! `Rng::new(derive_seed(..))` stream, so a document is a pure function of the chain and the seed.
//! The wording lives in `templates.rs`; this file owns the choices and the assembly only.

use crate::data::records::Pair;
use crate::data::templates::{
    self, FewShotPattern, InlineFewShotTemplate, LabelSeries, NumberLabels, OptionItemStyle,
    SpeakerPair,
};
use crate::rng::{derive_seed, Rng};

/// How the pairs of a document are laid out around its texts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Layout {
    /// A text without pairs, verbatim.
    #[value(skip)]
    Plain,
    /// Text, optional lead-in, then the pairs as few-shot Q/A (or the pairs first, inverted).
    Classic,
    /// Text, then the pairs as a two-speaker conversation (or the conversation first, inverted).
    Dialog,
    /// Text, all questions numbered, then all answers numbered.
    NumberedQuestions,
    /// A NatInst-style task: definition with the text, earlier pairs as examples, last as new input.
    InlineFewShot,
    /// Text and a conversation whose next turn (the last answer) is to be predicted.
    NextTurnDialog,
}

/// One rendered pre-training document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplatedDocument {
    pub text: String,
    pub layout: Layout,
    /// Pairs placed before the text (only ever true for Classic and Dialog).
    pub inverted: bool,
    /// Number of pairs rendered into the document.
    pub pairs: usize,
}

/// The type of a pair, with the parts its encoding carries beyond question and answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PairKind {
    Plain,
    MultipleChoice {
        options: Vec<String>,
    },
    ChainOfThought {
        rationale: String,
    },
    MultipleChoiceCot {
        options: Vec<String>,
        rationale: String,
    },
}

/// A pair with its encoding taken apart: `question` is the stem (no options, no trigger sentence),
/// `answer` the final answer (for chain of thought, the part after "Therefore, the answer is").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedPair {
    pub question: String,
    pub answer: String,
    pub kind: PairKind,
}

impl ParsedPair {
    /// The options of a multiple-choice pair (distinct, in the synthesizer's order).
    pub fn options(&self) -> Option<&[String]> {
        match &self.kind {
            PairKind::MultipleChoice { options } | PairKind::MultipleChoiceCot { options, .. } => {
                Some(options)
            }
            _ => None,
        }
    }

    /// The rationale of a chain-of-thought pair.
    pub fn rationale(&self) -> Option<&str> {
        match &self.kind {
            PairKind::ChainOfThought { rationale }
            | PairKind::MultipleChoiceCot { rationale, .. } => Some(rationale),
            _ => None,
        }
    }

    /// Whether the pair can be rendered: a non-empty question and answer, and for multiple choice
    /// an answer that is one of the options or an unanswerable phrase.
    pub fn is_renderable(&self) -> bool {
        if self.question.trim().is_empty() || self.answer.trim().is_empty() {
            return false;
        }
        match self.options() {
            Some(options) => {
                find_option(options, &self.answer).is_some() || is_unanswerable(&self.answer)
            }
            None => true,
        }
    }
}

// Layout draws (Instruct PT §2.2): by the fewest pairs of any text in the document.
const FEW_PAIRS_LAYOUTS: [(Layout, f64); 2] = [(Layout::Classic, 0.95), (Layout::Dialog, 0.05)];
const MANY_PAIRS_LAYOUTS: [(Layout, f64); 5] = [
    (Layout::Classic, 0.80),
    (Layout::Dialog, 0.05),
    (Layout::NumberedQuestions, 0.05),
    (Layout::InlineFewShot, 0.05),
    (Layout::NextTurnDialog, 0.05),
];
/// At or above this many pairs in every text, all five layouts are drawn.
const MANY_PAIRS: usize = 2;
/// Pairs before the text; only Classic and Dialog honour it.
const INVERSION_PROBABILITY: f64 = 0.05;

// The synthesizer's encoding (DESIGN.md §3), parsed, never rendered.
/// `\nOptions:\n- ` without its final space, which trimming the question may have removed.
const OPTIONS_MARKER: &str = "\nOptions:\n-";
const OPTION_SEPARATOR: &str = "\n- ";
const COT_TRIGGERS: [&str; 2] = [
    "Let's think step by step.",
    "Let\u{2019}s think step by step.",
];
const COT_ANSWER_MARKER: &str = "Therefore, the answer is";

/// Independent random streams of one document: each decision seeds `Rng::new(derive_seed(doc, s))`.
mod stream {
    pub const LAYOUT: u64 = 1;
    pub const INVERSION: u64 = 2;
    pub const PLAIN_PATTERN: u64 = 3;
    pub const MC_PATTERN: u64 = 4;
    pub const COT_PATTERN: u64 = 5;
    pub const MC_COT_PATTERN: u64 = 6;
    pub const TEXT_SEPARATOR: u64 = 7;
    pub const READ_START: u64 = 8;
    pub const READ_END: u64 = 9;
    pub const COMPRE_START: u64 = 10;
    pub const QA_START: u64 = 11;
    pub const QA_END: u64 = 12;
    pub const TEXT_START: u64 = 13;
    pub const DIALOG_BREAK: u64 = 14;
    pub const DIALOG_HEADER: u64 = 15;
    pub const SPEAKERS: u64 = 16;
    pub const NUMBERED: u64 = 17;
    pub const NUMBER_LABELS: u64 = 18;
    pub const INLINE: u64 = 19;
    pub const NEXT_TURN: u64 = 20;
    pub const OPTION_START: u64 = 21;
    pub const OPTION_ITEM: u64 = 22;
    pub const OPTION_ITEM_END: u64 = 23;
    pub const UNANSWERABLE: u64 = 24;
    /// Base of the per-pair option shuffles (then text index, then pair index).
    pub const SHUFFLE: u64 = 25;
}

/// Parse the synthesizer's in-string encoding of one pair. Options are trimmed, empty ones dropped
/// and duplicates (case-insensitive, final period ignored) kept once; an options marker with no
/// option left gives a plain pair. A chain of thought needs its answer to contain
/// "Therefore, the answer is" followed by something, either after a question ending with the trigger
/// sentence or on a line of its own; otherwise the whole answer is kept.
pub fn classify_pair(p: &Pair) -> ParsedPair {
    let (q, mut triggered) = strip_trigger(p.q.trim());
    let (stem, options) = match q.find(OPTIONS_MARKER) {
        Some(at) => {
            let mut options: Vec<String> = Vec::new();
            let body = &q[at + OPTIONS_MARKER.len()..];
            let body = body.strip_prefix(' ').unwrap_or(body);
            // A trailing empty option lost its space to trimming too.
            let body = body.strip_suffix("\n-").unwrap_or(body);
            for option in body.split(OPTION_SEPARATOR) {
                let option = option.trim();
                if !option.is_empty() && !options.iter().any(|o| same_text(o, option)) {
                    options.push(option.to_string());
                }
            }
            (q[..at].trim(), options)
        }
        None => (q, Vec::new()),
    };
    // The trigger may also sit between the stem and the options.
    let (stem, stem_triggered) = strip_trigger(stem);
    triggered |= stem_triggered;

    let a = p.a.trim();
    let marked = triggered || a.contains(&format!("\n{COT_ANSWER_MARKER}"));
    let (rationale, answer) = match a.rfind(COT_ANSWER_MARKER).filter(|_| marked) {
        Some(at) => {
            let last = a[at + COT_ANSWER_MARKER.len()..]
                .trim_start_matches([':', ' '])
                .trim();
            if last.is_empty() {
                ("", a)
            } else {
                (a[..at].trim(), last)
            }
        }
        None => ("", a),
    };

    let kind = match (options.is_empty(), rationale.is_empty()) {
        (true, true) => PairKind::Plain,
        (false, true) => PairKind::MultipleChoice { options },
        (true, false) => PairKind::ChainOfThought {
            rationale: rationale.to_string(),
        },
        (false, false) => PairKind::MultipleChoiceCot {
            options,
            rationale: rationale.to_string(),
        },
    };
    ParsedPair {
        question: stem.to_string(),
        answer: answer.to_string(),
        kind,
    }
}

fn strip_trigger(q: &str) -> (&str, bool) {
    for trigger in COT_TRIGGERS {
        if let Some(stem) = q.strip_suffix(trigger) {
            return (stem.trim_end(), true);
        }
    }
    (q, false)
}

/// Comparison key for answers and options: trimmed, lower-cased, without a final period.
fn answer_key(s: &str) -> String {
    s.trim().trim_end_matches('.').trim_end().to_lowercase()
}

fn same_text(a: &str, b: &str) -> bool {
    a.trim() == b.trim() || answer_key(a) == answer_key(b)
}

/// Index of the option the answer names: an exact match first, then a loose one.
fn find_option(options: &[String], answer: &str) -> Option<usize> {
    let answer = answer.trim();
    options
        .iter()
        .position(|o| o == answer)
        .or_else(|| options.iter().position(|o| same_text(o, answer)))
}

fn is_unanswerable(answer: &str) -> bool {
    let key = answer_key(answer);
    templates::UNANSWERABLE_ANSWER
        .iter()
        .chain(templates::UNANSWERABLE_OPTION)
        .any(|phrase| answer_key(phrase) == key)
}

/// Render one synthesis chain (texts in order, each with its pairs) into pre-training documents.
/// Consecutive texts with >= 1 renderable pair form one few-shot document; a text with none (no
/// pairs, or only pairs that cannot be rendered) is emitted alone as `Layout::Plain`, verbatim.
/// Empty documents are never returned. Document seeds derive from `seed` and the index of the
/// document's first text in `entries`.
pub fn template_chain(entries: &[(&str, &[Pair])], seed: u64) -> Vec<TemplatedDocument> {
    template_chain_without(entries, seed, None)
}

/// As `template_chain`, never drawing the layout `skip` (the other layouts keep their relative
/// weights): the ablation study's leave-one-format-out data.
pub fn template_chain_without(
    entries: &[(&str, &[Pair])],
    seed: u64,
    skip: Option<Layout>,
) -> Vec<TemplatedDocument> {
    let parsed: Vec<Vec<ParsedPair>> = entries
        .iter()
        .map(|(_, pairs)| {
            pairs
                .iter()
                .map(classify_pair)
                .filter(ParsedPair::is_renderable)
                .collect()
        })
        .collect();

    let mut docs = Vec::new();
    let mut group_start: Option<usize> = None;
    for (i, (text, _)) in entries.iter().enumerate() {
        if !parsed[i].is_empty() {
            group_start.get_or_insert(i);
            continue;
        }
        if let Some(start) = group_start.take() {
            docs.extend(render_group(entries, &parsed, start, i, seed, skip));
        }
        if !text.trim().is_empty() {
            docs.push(TemplatedDocument {
                text: text.to_string(),
                layout: Layout::Plain,
                inverted: false,
                pairs: 0,
            });
        }
    }
    if let Some(start) = group_start {
        docs.extend(render_group(
            entries,
            &parsed,
            start,
            entries.len(),
            seed,
            skip,
        ));
    }
    docs
}

/// Every choice one document makes before rendering.
struct DocStyle {
    layout: Layout,
    inverted: bool,
    plain: FewShotPattern,
    mc: FewShotPattern,
    cot: FewShotPattern,
    mc_cot: FewShotPattern,
    /// Between the shots of one text: the plain pattern's separator, shared by all pair types.
    pair_separator: &'static str,
    /// Between the texts of the document: a (separately drawn) plain pattern's separator.
    text_separator: &'static str,
    read_start: &'static str,
    read_end: &'static str,
    compre_start: &'static str,
    qa_start: &'static str,
    qa_end: &'static str,
    text_start: &'static str,
    dialog_break: &'static str,
    dialog_header: &'static str,
    speakers: SpeakerPair,
    numbered: &'static str,
    number_labels: NumberLabels,
    inline: InlineFewShotTemplate,
    next_turn: &'static str,
    options: OptionStyle,
}

/// How the document renders multiple-choice options.
#[derive(Clone, Copy, Debug)]
struct OptionStyle {
    start: &'static str,
    item: OptionItemStyle,
    item_end: &'static str,
    unanswerable: &'static str,
}

fn pick<T: Copy>(doc_seed: u64, stream: u64, pool: &[T]) -> T {
    // Pools are static and non-empty (checked by `template_pools_are_well_formed`).
    *Rng::new(derive_seed(doc_seed, stream)).choose(pool)
}

impl DocStyle {
    fn draw(doc_seed: u64, min_pairs: usize, explained: bool, skip: Option<Layout>) -> Self {
        let full: &[(Layout, f64)] = if min_pairs < MANY_PAIRS {
            &FEW_PAIRS_LAYOUTS
        } else {
            &MANY_PAIRS_LAYOUTS
        };
        // Every table has two layouts or more, so one left out leaves at least one.
        let table: Vec<(Layout, f64)> = full
            .iter()
            .copied()
            .filter(|(l, _)| Some(*l) != skip)
            .collect();
        let weights: Vec<f64> = table.iter().map(|(_, w)| *w).collect();
        let layout_at = Rng::new(derive_seed(doc_seed, stream::LAYOUT)).weighted_index(&weights);
        let layout = table.get(layout_at).map_or(Layout::Classic, |(l, _)| *l);
        let invert_roll =
            Rng::new(derive_seed(doc_seed, stream::INVERSION)).chance(INVERSION_PROBABILITY);
        let inverted = invert_roll && matches!(layout, Layout::Classic | Layout::Dialog);
        let plain = pick(doc_seed, stream::PLAIN_PATTERN, templates::PLAIN_PATTERNS);
        let inline_pool = if explained {
            templates::INLINE_FEW_SHOT_EXPLAINED
        } else {
            templates::INLINE_FEW_SHOT
        };
        DocStyle {
            layout,
            inverted,
            plain,
            mc: pick(doc_seed, stream::MC_PATTERN, templates::MC_PATTERNS),
            cot: pick(doc_seed, stream::COT_PATTERN, templates::COT_PATTERNS),
            mc_cot: pick(doc_seed, stream::MC_COT_PATTERN, templates::MC_COT_PATTERNS),
            pair_separator: plain.example_separator,
            text_separator: pick(doc_seed, stream::TEXT_SEPARATOR, templates::PLAIN_PATTERNS)
                .example_separator,
            read_start: pick(doc_seed, stream::READ_START, templates::READ_START),
            read_end: pick(doc_seed, stream::READ_END, templates::READ_END),
            compre_start: pick(doc_seed, stream::COMPRE_START, templates::COMPRE_START),
            qa_start: pick(doc_seed, stream::QA_START, templates::QA_START),
            qa_end: pick(doc_seed, stream::QA_END, templates::QA_END),
            text_start: pick(doc_seed, stream::TEXT_START, templates::TEXT_START),
            dialog_break: pick(doc_seed, stream::DIALOG_BREAK, templates::DIALOG_BREAK),
            dialog_header: pick(doc_seed, stream::DIALOG_HEADER, templates::DIALOG_HEADER),
            speakers: pick(doc_seed, stream::SPEAKERS, templates::SPEAKERS),
            numbered: pick(doc_seed, stream::NUMBERED, templates::NUMBERED),
            number_labels: pick(doc_seed, stream::NUMBER_LABELS, templates::NUMBER_LABELS),
            inline: pick(doc_seed, stream::INLINE, inline_pool),
            next_turn: pick(doc_seed, stream::NEXT_TURN, templates::NEXT_TURN),
            options: OptionStyle {
                start: pick(doc_seed, stream::OPTION_START, templates::OPTION_START),
                item: pick(doc_seed, stream::OPTION_ITEM, templates::OPTION_ITEM),
                item_end: pick(
                    doc_seed,
                    stream::OPTION_ITEM_END,
                    templates::OPTION_ITEM_END,
                ),
                unanswerable: pick(
                    doc_seed,
                    stream::UNANSWERABLE,
                    templates::UNANSWERABLE_OPTION,
                ),
            },
        }
    }
}

/// One pair ready to render: options already shuffled, relabelled and resolved to a target.
struct Shot {
    question: String,
    /// The rendered option block; empty for pairs without options.
    options: String,
    multiple_choice: bool,
    /// The answer as shown: a label, the option text, or the free-form answer.
    answer: String,
    rationale: Option<String>,
}

impl Shot {
    fn pattern<'s>(&self, style: &'s DocStyle) -> &'s FewShotPattern {
        match (self.multiple_choice, self.rationale.is_some()) {
            (false, false) => &style.plain,
            (true, false) => &style.mc,
            (false, true) => &style.cot,
            (true, true) => &style.mc_cot,
        }
    }

    /// The full few-shot rendering with the document's pattern for this pair type.
    fn render(&self, style: &DocStyle) -> String {
        let p = self.pattern(style);
        let inputs = if p.inputs.contains("{options}") {
            fill(
                p.inputs,
                &[("question", &self.question), ("options", &self.options)],
            )
        } else {
            fill(p.inputs, &[("question", &self.bare_question())])
        };
        let targets = self.targets(p);
        format!(
            "{}{}{}{}{}",
            p.inputs_prefix, inputs, p.x_y_delimiter, p.targets_prefix, targets
        )
    }

    fn targets(&self, p: &FewShotPattern) -> String {
        fill(
            p.targets,
            &[
                ("answer", &self.answer),
                ("cot", self.rationale.as_deref().unwrap_or("")),
            ],
        )
    }

    /// Question with its options, for layouts that do not use the few-shot patterns.
    fn bare_question(&self) -> String {
        format!("{}{}", self.question, self.options)
    }

    /// The answer with its rationale (in the document's CoT pattern's order), for the same layouts.
    fn bare_answer(&self, style: &DocStyle) -> String {
        match self.rationale {
            Some(_) => self.targets(self.pattern(style)),
            None => self.answer.clone(),
        }
    }
}

fn render_group(
    entries: &[(&str, &[Pair])],
    parsed: &[Vec<ParsedPair>],
    start: usize,
    end: usize,
    seed: u64,
    skip: Option<Layout>,
) -> Option<TemplatedDocument> {
    let group = &parsed[start..end];
    let doc_seed = derive_seed(seed, start as u64);
    let min_pairs = group.iter().map(Vec::len).min().unwrap_or(0);
    let explained = group.iter().flatten().any(|p| p.rationale().is_some());
    let style = DocStyle::draw(doc_seed, min_pairs, explained, skip);

    let mut pieces = Vec::with_capacity(group.len());
    let mut pairs = 0;
    for (t, pairs_of_text) in group.iter().enumerate() {
        let text_index = (start + t) as u64;
        let shots: Vec<Shot> = pairs_of_text
            .iter()
            .enumerate()
            .filter_map(|(k, p)| {
                let shuffle_seed = derive_seed(
                    derive_seed(derive_seed(doc_seed, stream::SHUFFLE), text_index),
                    k as u64,
                );
                make_shot(p, &style.options, &mut Rng::new(shuffle_seed))
            })
            .collect();
        pairs += shots.len();
        let context = entries.get(start + t).map_or("", |(text, _)| *text);
        pieces.push(render_text(context, &shots, &style));
    }
    let text = pieces.join(style.text_separator);
    if text.trim().is_empty() {
        return None;
    }
    Some(TemplatedDocument {
        text,
        layout: style.layout,
        inverted: style.inverted,
        pairs,
    })
}

fn make_shot(p: &ParsedPair, style: &OptionStyle, rng: &mut Rng) -> Option<Shot> {
    let (options, answer) = match p.options() {
        Some(options) => {
            let block = render_choices(options, &p.answer, style, rng)?;
            (block.text, block.target)
        }
        None => (String::new(), p.answer.clone()),
    };
    Some(Shot {
        question: p.question.clone(),
        multiple_choice: p.options().is_some(),
        options,
        answer,
        rationale: p.rationale().map(str::to_string),
    })
}

/// A rendered, shuffled option block and the answer it implies.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ChoiceBlock {
    text: String,
    /// `(label, option text)` in rendered order; bullet labels repeat.
    items: Vec<(String, String)>,
    /// Index into `items` of the correct option.
    correct: usize,
    /// The label when labels are unique, else the option text.
    target: String,
}

/// Shuffle and relabel the options; `None` when the answer is neither an option nor unanswerable.
/// An unanswerable answer targets an option that says so, or the document's unanswerable phrase,
/// appended as one more option.
fn render_choices(
    options: &[String],
    answer: &str,
    style: &OptionStyle,
    rng: &mut Rng,
) -> Option<ChoiceBlock> {
    let mut options = options.to_vec();
    let correct = match find_option(&options, answer) {
        Some(i) => i,
        None if is_unanswerable(answer) => match options.iter().position(|o| is_unanswerable(o)) {
            Some(i) => i,
            None => {
                options.push(style.unanswerable.to_string());
                options.len() - 1
            }
        },
        None => return None,
    };
    let mut order: Vec<usize> = (0..options.len()).collect();
    rng.shuffle(&mut order);

    let item = &style.item;
    let mut text = style.start.to_string();
    let mut items = Vec::with_capacity(order.len());
    let mut correct_at = 0;
    for (position, &source) in order.iter().enumerate() {
        let label = option_label(item, position);
        let option = options.get(source).cloned().unwrap_or_default();
        text.push_str(item.before);
        text.push_str(&label);
        text.push_str(item.after);
        text.push_str(&option);
        if position + 1 < order.len() {
            text.push_str(style.item_end);
        }
        if source == correct {
            correct_at = position;
        }
        items.push((label, option));
    }
    let target = match item.series {
        LabelSeries::Bullet => items.get(correct_at).map(|(_, o)| o.clone()),
        _ => items.get(correct_at).map(|(l, _)| l.trim().to_string()),
    }
    .unwrap_or_default();
    Some(ChoiceBlock {
        text,
        items,
        correct: correct_at,
        target,
    })
}

/// The label of the option at `position` (0-based) in the given style.
fn option_label(item: &OptionItemStyle, position: usize) -> String {
    let symbol = match item.series {
        LabelSeries::Bullet => return item.label.to_string(),
        LabelSeries::UpperLetter => letters(position),
        LabelSeries::LowerLetter => letters(position).to_lowercase(),
        LabelSeries::Arabic => (position + 1).to_string(),
        LabelSeries::LowerRoman => roman(position + 1).to_lowercase(),
        LabelSeries::UpperRoman => roman(position + 1),
    };
    fill(item.label, &[("", &symbol)])
}

/// A, B, …, Z, AA, AB, … (bijective base 26), so labels stay unique past 26 options.
fn letters(mut index: usize) -> String {
    let mut out = Vec::new();
    loop {
        out.push(b'A' + (index % 26) as u8);
        if index < 26 {
            break;
        }
        index = index / 26 - 1;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

fn roman(mut n: usize) -> String {
    const DIGITS: [(usize, &str); 13] = [
        (1000, "M"),
        (900, "CM"),
        (500, "D"),
        (400, "CD"),
        (100, "C"),
        (90, "XC"),
        (50, "L"),
        (40, "XL"),
        (10, "X"),
        (9, "IX"),
        (5, "V"),
        (4, "IV"),
        (1, "I"),
    ];
    let mut out = String::new();
    for (value, digits) in DIGITS {
        while n >= value {
            out.push_str(digits);
            n -= value;
        }
    }
    out
}

fn render_text(context: &str, shots: &[Shot], style: &DocStyle) -> String {
    if shots.is_empty() {
        return context.to_string();
    }
    match style.layout {
        Layout::Plain => context.to_string(),
        Layout::Classic => render_classic(context, shots, style, style.inverted),
        Layout::Dialog => render_dialog(context, shots, style),
        Layout::NumberedQuestions => render_numbered(context, shots, style),
        Layout::InlineFewShot if shots.len() >= 2 => render_inline(context, shots, style),
        // Inline few-shot needs an example and a new input; fewer pairs fall back to Classic.
        Layout::InlineFewShot => render_classic(context, shots, style, false),
        Layout::NextTurnDialog => render_next_turn(context, shots, style),
    }
}

fn render_classic(context: &str, shots: &[Shot], style: &DocStyle, inverted: bool) -> String {
    let qa = shots
        .iter()
        .map(|s| s.render(style))
        .collect::<Vec<_>>()
        .join(style.pair_separator);
    if inverted {
        return format!(
            "{}{}{}",
            fill(style.qa_start, &[("qa_demos", &qa)]),
            style.qa_end,
            fill(style.text_start, &[("context", context)])
        );
    }
    let read_end = if style.compre_start.is_empty() {
        ""
    } else {
        style.read_end
    };
    format!(
        "{}{}{}{}{}",
        fill(style.read_start, &[("context", context)]),
        read_end,
        style.compre_start,
        style.pair_separator,
        qa
    )
}

/// The turns of a conversation: each pair is one asker turn and one answerer turn.
fn dialog_turns(shots: &[Shot], style: &DocStyle) -> String {
    let mut turns = String::new();
    for shot in shots {
        turns.push_str(style.speakers.asker);
        turns.push_str(&shot.bare_question());
        turns.push_str(style.speakers.answerer);
        turns.push_str(&shot.bare_answer(style));
    }
    turns
}

fn render_dialog(context: &str, shots: &[Shot], style: &DocStyle) -> String {
    let turns = dialog_turns(shots, style);
    if style.inverted {
        let conversation = format!("{}{}", style.dialog_header, turns);
        return format!(
            "{}{}{}",
            conversation.trim_start_matches('\n'),
            style.qa_end,
            fill(style.text_start, &[("context", context)])
        );
    }
    // Without a header the first turn's own newline follows a blank line, not a dangling break.
    let dialog_break = if style.dialog_header.is_empty() {
        "\n"
    } else {
        style.dialog_break
    };
    format!(
        "{}{}{}{}",
        context, dialog_break, style.dialog_header, turns
    )
}

fn render_numbered(context: &str, shots: &[Shot], style: &DocStyle) -> String {
    let mut questions = Vec::with_capacity(shots.len());
    let mut answers = Vec::with_capacity(shots.len());
    for (i, shot) in shots.iter().enumerate() {
        let index = (i + 1).to_string();
        let labels = style.number_labels;
        questions.push(format!(
            "{}{}",
            fill(labels.question, &[("i", &index)]),
            shot.bare_question()
        ));
        answers.push(format!(
            "{}{}",
            fill(labels.answer, &[("i", &index)]),
            shot.bare_answer(style)
        ));
    }
    fill(
        style.numbered,
        &[
            ("context", context),
            ("questions", &questions.join("\n")),
            ("answers", &answers.join("\n")),
        ],
    )
}

fn render_inline(context: &str, shots: &[Shot], style: &DocStyle) -> String {
    let template = &style.inline;
    let with_explanation = |frame: &str, shot: &Shot| {
        let mut out = fill(
            frame,
            &[
                ("question", &shot.bare_question()),
                ("answer", &shot.answer),
            ],
        );
        match (&shot.rationale, template.explanation.is_empty()) {
            (Some(rationale), false) => {
                out.push_str(&fill(template.explanation, &[("explanation", rationale)]));
            }
            // A rationale with no explanation slot stays in the answer, as in other layouts.
            (Some(_), true) => {
                out = fill(
                    frame,
                    &[
                        ("question", &shot.bare_question()),
                        ("answer", &shot.bare_answer(style)),
                    ],
                );
            }
            (None, _) => {}
        }
        out
    };
    let (last, examples) = match shots.split_last() {
        Some(split) => split,
        None => return context.to_string(),
    };
    let examples = examples
        .iter()
        .map(|s| with_explanation(template.example, s))
        .collect::<Vec<_>>()
        .join(template.example_separator);
    format!(
        "{}{}{}",
        fill(template.head, &[("context", context)]),
        examples,
        with_explanation(template.new_input, last)
    )
}

fn render_next_turn(context: &str, shots: &[Shot], style: &DocStyle) -> String {
    let (last, earlier) = match shots.split_last() {
        Some(split) => split,
        None => return context.to_string(),
    };
    let dialog = format!(
        "{}{}{}",
        dialog_turns(earlier, style),
        style.speakers.asker,
        last.bare_question()
    );
    fill(
        style.next_turn,
        &[
            ("context", context),
            ("dialog", &dialog),
            ("next", &last.bare_answer(style)),
        ],
    )
}

/// Replace `{key}` placeholders in one left-to-right pass: substituted values are never scanned
/// again, so braces inside a raw text or an answer come out verbatim. Unknown `{…}` stay as written.
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(template.len() + values.iter().map(|(_, v)| v.len()).sum::<usize>());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after.find('}').and_then(|close| {
            let key = &after[..close];
            values
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v, close))
        });
        match value {
            Some((v, close)) => {
                out.push_str(v);
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn pair(q: &str, a: &str) -> Pair {
        Pair {
            q: q.to_string(),
            a: a.to_string(),
        }
    }

    fn mc(question: &str, options: &[&str], answer: &str) -> Pair {
        pair(
            &format!("{question}\nOptions:\n- {}", options.join("\n- ")),
            answer,
        )
    }

    fn cot(question: &str, rationale: &str, answer: &str) -> Pair {
        pair(
            &format!("{question}\nLet's think step by step."),
            &format!("{rationale}\nTherefore, the answer is {answer}"),
        )
    }

    const TEXT: &str = "The harbour at Vellmouth froze in 1843. Ships waited {question} weeks \
                        for the ice to break, and the town's bakers sold bread on the ice itself.";

    fn mixed_pairs() -> Vec<Pair> {
        vec![
            pair("When did the harbour freeze?", "In 1843."),
            mc(
                "Who sold bread on the ice?",
                &["The bakers", "The sailors", "The mayor", "Nobody"],
                "The bakers",
            ),
            cot(
                "Could ships leave during the freeze?",
                "The ships waited for the ice to break, so they were stuck.",
                "no",
            ),
            pair(
                "Which town is this about?\nOptions:\n- Vellmouth\n- Dunmore\nLet's think step by step.",
                "The text names the harbour at Vellmouth.\nTherefore, the answer is Vellmouth",
            ),
        ]
    }

    fn count_layouts(pairs: &[Pair], n: u64) -> (HashMap<Layout, usize>, usize, usize) {
        let mut counts = HashMap::new();
        let (mut classic_or_dialog, mut inverted) = (0, 0);
        for seed in 0..n {
            let docs = template_chain(&[(TEXT, pairs)], seed);
            assert_eq!(docs.len(), 1);
            let doc = &docs[0];
            *counts.entry(doc.layout).or_insert(0) += 1;
            if matches!(doc.layout, Layout::Classic | Layout::Dialog) {
                classic_or_dialog += 1;
                inverted += doc.inverted as usize;
            } else {
                assert!(!doc.inverted, "{:?} cannot be inverted", doc.layout);
            }
        }
        (counts, classic_or_dialog, inverted)
    }

    fn assert_share(counts: &HashMap<Layout, usize>, layout: Layout, target: f64, n: usize) {
        let share = *counts.get(&layout).unwrap_or(&0) as f64 / n as f64;
        assert!(
            (share - target).abs() <= 0.02,
            "{layout:?}: {share:.4} vs {target} ({counts:?})"
        );
    }

    #[test]
    fn a_layout_left_out_is_never_drawn_and_the_others_keep_their_weights() {
        let pairs: Vec<Pair> = (0..3)
            .map(|i| Pair {
                q: format!("Question {i}?"),
                a: format!("Answer {i}."),
            })
            .collect();
        let texts: Vec<String> = (0..400).map(|i| format!("Text number {i}.")).collect();
        let mut counts = std::collections::HashMap::new();
        for (k, t) in texts.iter().enumerate() {
            let entries = [(t.as_str(), pairs.as_slice())];
            for d in template_chain_without(&entries, k as u64, Some(Layout::Classic)) {
                *counts.entry(d.layout).or_insert(0usize) += 1;
            }
        }
        assert!(!counts.contains_key(&Layout::Classic), "{counts:?}");
        // Four layouts of equal weight remain: each is drawn about a quarter of the time.
        for l in [
            Layout::Dialog,
            Layout::NumberedQuestions,
            Layout::InlineFewShot,
            Layout::NextTurnDialog,
        ] {
            let n = counts.get(&l).copied().unwrap_or(0);
            assert!((60..=140).contains(&n), "{l:?}: {n} of 400 ({counts:?})");
        }
    }

    #[test]
    fn same_input_and_seed_give_identical_bytes() {
        let pairs = mixed_pairs();
        let chain: [(&str, &[Pair]); 2] = [(TEXT, &pairs), ("Second text.", &pairs[..2])];
        for seed in 0..200 {
            assert_eq!(template_chain(&chain, seed), template_chain(&chain, seed));
        }
    }

    #[test]
    fn different_seeds_give_varied_documents() {
        let pairs = mixed_pairs();
        let texts: HashSet<String> = (0..300)
            .map(|seed| template_chain(&[(TEXT, &pairs)], seed)[0].text.clone())
            .collect();
        assert!(texts.len() >= 290, "only {} distinct of 300", texts.len());
    }

    #[test]
    fn raw_text_is_verbatim_in_every_layout_and_inversion() {
        let pairs = mixed_pairs();
        let tricky =
            "Braces {context} and {answer} and {qa_demos} stay as written.\n\n  Indent kept.  ";
        let mut seen = HashSet::new();
        for seed in 0..3000 {
            for text in [TEXT, tricky] {
                let docs = template_chain(&[(text, &pairs)], seed);
                assert_eq!(docs.len(), 1);
                assert!(
                    docs[0].text.contains(text),
                    "seed {seed}:\n{}",
                    docs[0].text
                );
                assert_eq!(docs[0].pairs, pairs.len());
                seen.insert((docs[0].layout, docs[0].inverted));
            }
        }
        for want in [
            (Layout::Classic, false),
            (Layout::Classic, true),
            (Layout::Dialog, false),
            (Layout::Dialog, true),
            (Layout::NumberedQuestions, false),
            (Layout::InlineFewShot, false),
            (Layout::NextTurnDialog, false),
        ] {
            assert!(seen.contains(&want), "never saw {want:?}");
        }
    }

    #[test]
    fn every_question_and_answer_appears() {
        let pairs = mixed_pairs();
        for seed in 0..2000 {
            let doc = &template_chain(&[(TEXT, &pairs)], seed)[0];
            for p in &pairs {
                let parsed = classify_pair(p);
                assert!(
                    doc.text.contains(&parsed.question),
                    "seed {seed}: {}",
                    doc.text
                );
                if let Some(r) = parsed.rationale() {
                    assert!(doc.text.contains(r), "seed {seed}: {}", doc.text);
                }
                match parsed.options() {
                    // The target is a label or the option text; the option text is always shown.
                    Some(options) => {
                        for o in options {
                            assert!(doc.text.contains(o.as_str()), "seed {seed}: {}", doc.text);
                        }
                    }
                    None => assert!(
                        doc.text.contains(&parsed.answer),
                        "seed {seed}: {}",
                        doc.text
                    ),
                }
            }
        }
    }

    #[test]
    fn layout_frequencies_with_fewer_than_two_pairs_match_targets() {
        let n = 10_000;
        let (counts, _, _) = count_layouts(&[pair("What froze?", "The harbour.")], n as u64);
        assert_share(&counts, Layout::Classic, 0.95, n);
        assert_share(&counts, Layout::Dialog, 0.05, n);
        assert_eq!(counts.len(), 2, "{counts:?}");
    }

    #[test]
    fn layout_frequencies_with_two_or_more_pairs_match_targets() {
        let n = 10_000;
        let pairs = mixed_pairs();
        let (counts, _, _) = count_layouts(&pairs, n as u64);
        assert_share(&counts, Layout::Classic, 0.80, n);
        for layout in [
            Layout::Dialog,
            Layout::NumberedQuestions,
            Layout::InlineFewShot,
            Layout::NextTurnDialog,
        ] {
            assert_share(&counts, layout, 0.05, n);
        }
    }

    #[test]
    fn inversion_is_about_five_percent_of_classic_and_dialog() {
        for pairs in [vec![pair("What froze?", "The harbour.")], mixed_pairs()] {
            let (_, total, inverted) = count_layouts(&pairs, 10_000);
            let share = inverted as f64 / total as f64;
            assert!((share - 0.05).abs() <= 0.02, "{share}");
        }
    }

    #[test]
    fn layout_regime_uses_the_fewest_pairs_of_any_text() {
        let many = mixed_pairs();
        let one = [pair("What froze?", "The harbour.")];
        let chain: [(&str, &[Pair]); 2] = [(TEXT, &many), ("Another text.", &one)];
        for seed in 0..2000 {
            let doc = &template_chain(&chain, seed)[0];
            assert!(matches!(doc.layout, Layout::Classic | Layout::Dialog));
        }
    }

    #[test]
    fn options_are_shuffled_and_the_target_label_names_the_correct_option() {
        let options: Vec<String> = ["red", "green", "blue", "amber", "violet"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for &item in templates::OPTION_ITEM {
            let style = OptionStyle {
                start: "\nOptions:",
                item,
                item_end: ";",
                unanswerable: "None of the above",
            };
            let mut positions = HashSet::new();
            for seed in 0..200 {
                let block = render_choices(&options, "blue", &style, &mut Rng::new(seed))
                    .expect("answer is an option");
                assert_eq!(block.items[block.correct].1, "blue");
                positions.insert(block.correct);
                let mut shown: Vec<&str> = block.items.iter().map(|(_, o)| o.as_str()).collect();
                shown.sort_unstable();
                assert_eq!(shown, ["amber", "blue", "green", "red", "violet"]);
                if item.series == LabelSeries::Bullet {
                    assert_eq!(block.target, "blue");
                } else {
                    // Unique labels: the target is the label, and only the correct item has it.
                    let with_label: Vec<_> = block
                        .items
                        .iter()
                        .filter(|(l, _)| l.trim() == block.target)
                        .collect();
                    assert_eq!(with_label.len(), 1, "{:?}", block.items);
                    assert_eq!(with_label[0].1, "blue");
                    assert!(block.text.contains(&block.target));
                }
            }
            assert_eq!(positions.len(), 5, "correct option never moved: {item:?}");
        }
    }

    #[test]
    fn labels_are_unique_past_the_alphabet() {
        let labels: HashSet<String> = (0..1000).map(letters).collect();
        assert_eq!(labels.len(), 1000);
        assert_eq!(letters(0), "A");
        assert_eq!(letters(25), "Z");
        assert_eq!(letters(26), "AA");
        assert_eq!(roman(4), "IV");
        assert_eq!(roman(14), "XIV");
        let item = OptionItemStyle {
            before: "\n",
            series: LabelSeries::LowerLetter,
            label: "({})",
            after: " ",
        };
        assert_eq!(option_label(&item, 1), "(b)");
    }

    #[test]
    fn correct_option_moves_within_documents() {
        let pairs = [mc(
            "Which season was it?",
            &["Winter", "Summer", "Spring", "Autumn"],
            "Winter",
        )];
        let mut firsts = HashSet::new();
        for seed in 0..400 {
            let doc = &template_chain(&[(TEXT, &pairs)], seed)[0];
            let first = ["Winter", "Summer", "Spring", "Autumn"]
                .into_iter()
                .min_by_key(|o| doc.text.find(o).unwrap_or(usize::MAX));
            firsts.insert(first);
        }
        assert_eq!(firsts.len(), 4, "{firsts:?}");
    }

    #[test]
    fn pair_whose_answer_is_not_an_option_is_dropped() {
        let bad = mc("Which colour?", &["red", "green"], "purple");
        let good = pair("What froze?", "The harbour.");
        let docs = template_chain(&[(TEXT, &[bad.clone(), good])], 7);
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].pairs, 1);
        assert!(!docs[0].text.contains("Which colour?"));
        // A text whose only pair is unusable is plain text.
        let docs = template_chain(&[(TEXT, &[bad])], 7);
        assert_eq!(docs[0].layout, Layout::Plain);
        assert_eq!(docs[0].text, TEXT);
    }

    #[test]
    fn unanswerable_answer_targets_an_unanswerable_option() {
        let style = OptionStyle {
            start: "",
            item: templates::OPTION_ITEM[0],
            item_end: "",
            unanswerable: "Not enough information",
        };
        let options = vec!["red".to_string(), "green".to_string()];
        let block = render_choices(&options, "Unanswerable", &style, &mut Rng::new(1))
            .expect("unanswerable is kept");
        assert_eq!(block.items.len(), 3);
        assert_eq!(block.target, "Not enough information");
        let with_own = vec!["red".to_string(), "None of the above".to_string()];
        let block = render_choices(&with_own, "none of the above.", &style, &mut Rng::new(1))
            .expect("matches the option");
        assert_eq!(block.items.len(), 2);
        assert_eq!(block.target, "None of the above");
    }

    #[test]
    fn cot_renders_rationale_and_answer_without_the_trigger() {
        let pairs = [
            cot("Is 17 prime?", "17 has no divisors between 2 and 16", "yes"),
            cot("Is 21 prime?", "21 equals 3 times 7", "no"),
        ];
        for seed in 0..1000 {
            let doc = &template_chain(&[(TEXT, &pairs)], seed)[0];
            for text in [
                "Is 17 prime?",
                "17 has no divisors between 2 and 16",
                "21 equals 3 times 7",
            ] {
                assert!(doc.text.contains(text), "{}", doc.text);
            }
            assert!(
                !doc.text.contains("Let's think step by step"),
                "{}",
                doc.text
            );
            assert!(!doc.text.contains(COT_ANSWER_MARKER), "{}", doc.text);
        }
    }

    #[test]
    fn classify_pair_parses_each_encoding() {
        let p = classify_pair(&pair(" What? ", " It. "));
        assert_eq!((p.question.as_str(), p.answer.as_str()), ("What?", "It."));
        assert_eq!(p.kind, PairKind::Plain);

        let p = classify_pair(&mc("Pick", &["a", "b", "a", " "], "b"));
        assert_eq!(p.question, "Pick");
        assert_eq!(p.options(), Some(&["a".to_string(), "b".to_string()][..]));

        let p = classify_pair(&cot("Sum 2+2?", "Two and two make four.", "4"));
        assert_eq!(p.question, "Sum 2+2?");
        assert_eq!(p.answer, "4");
        assert_eq!(p.rationale(), Some("Two and two make four."));

        let p = classify_pair(&mixed_pairs()[3]);
        assert_eq!(p.question, "Which town is this about?");
        assert_eq!(p.answer, "Vellmouth");
        assert!(matches!(p.kind, PairKind::MultipleChoiceCot { .. }));

        // Trigger with no final answer: the whole answer is kept.
        let p = classify_pair(&pair("Why?\nLet's think step by step.", "Because."));
        assert_eq!(
            (p.question.as_str(), p.answer.as_str()),
            ("Why?", "Because.")
        );
        assert_eq!(p.kind, PairKind::Plain);

        // Marker with no options after it: plain.
        let p = classify_pair(&pair("Pick\nOptions:\n- ", "x"));
        assert_eq!(p.kind, PairKind::Plain);
        assert_eq!(p.question, "Pick");
    }

    #[test]
    fn zero_pair_text_is_plain_and_verbatim() {
        let docs = template_chain(&[(TEXT, &[])], 3);
        assert_eq!(
            docs,
            vec![TemplatedDocument {
                text: TEXT.to_string(),
                layout: Layout::Plain,
                inverted: false,
                pairs: 0
            }]
        );
    }

    #[test]
    fn empty_chain_and_empty_texts_give_no_documents() {
        assert!(template_chain(&[], 1).is_empty());
        assert!(template_chain(&[("", &[]), ("  \n", &[])], 1).is_empty());
    }

    #[test]
    fn multi_text_chain_is_one_document_with_texts_in_order() {
        let pairs = mixed_pairs();
        let texts = [
            "First text about ice.",
            "Second text about bread.",
            "Third text about ships.",
        ];
        let chain: Vec<(&str, &[Pair])> = texts.iter().map(|t| (*t, &pairs[..])).collect();
        for seed in 0..500 {
            let docs = template_chain(&chain, seed);
            assert_eq!(docs.len(), 1);
            assert_eq!(docs[0].pairs, 3 * pairs.len());
            let at: Vec<usize> = texts
                .iter()
                .map(|t| docs[0].text.find(t).expect("text present"))
                .collect();
            assert!(at.windows(2).all(|w| w[0] < w[1]), "{}", docs[0].text);
        }
    }

    #[test]
    fn zero_pair_text_splits_a_chain() {
        let pairs = mixed_pairs();
        let chain: [(&str, &[Pair]); 3] = [
            ("Alpha text.", &pairs),
            ("Beta text.", &[]),
            ("Gamma text.", &pairs),
        ];
        let docs = template_chain(&chain, 11);
        assert_eq!(docs.len(), 3);
        assert!(docs[0].text.contains("Alpha text.") && !docs[0].text.contains("Gamma"));
        assert_eq!(docs[1].layout, Layout::Plain);
        assert_eq!(docs[1].text, "Beta text.");
        assert!(docs[2].text.contains("Gamma text."));
    }

    #[test]
    fn odd_inputs_never_panic() {
        let many_options: Vec<String> = (0..40).map(|i| format!("opt{i}")).collect();
        let many: Vec<&str> = many_options.iter().map(String::as_str).collect();
        let odd = vec![
            pair("", ""),
            pair("", "an answer"),
            pair("a question", ""),
            mc("One option", &["only"], "only"),
            mc("Duplicate answers", &["same", "same", "Same."], "same"),
            mc("Forty options", &many, "opt33"),
            pair("\nOptions:\n- ", "x"),
            pair("Let's think step by step.", "Therefore, the answer is"),
            pair(
                "Q\nLet's think step by step.",
                "\nTherefore, the answer is 5",
            ),
            pair("{question}{answer}{", "}{cot}"),
            pair("Unicode — ünïcode?", "ja 日本"),
        ];
        for seed in 0..500 {
            for pairs in [&odd[..], &odd[3..], &odd[..1]] {
                for doc in template_chain(&[(TEXT, pairs), ("", pairs)], seed) {
                    assert!(!doc.text.trim().is_empty());
                }
            }
        }
    }

    #[test]
    fn fill_is_single_pass() {
        assert_eq!(
            fill("<{a}|{b}|{c}>", &[("a", "{b}"), ("b", "x")]),
            "<{b}|x|{c}>"
        );
        assert_eq!(fill("{", &[]), "{");
        assert_eq!(fill("{}.", &[("", "A")]), "A.");
    }

    #[test]
    fn template_pools_are_well_formed() {
        fn once(s: &str, key: &str) -> bool {
            s.matches(key).count() == 1
        }
        for (pool, min) in [
            (templates::READ_START, 30),
            (templates::COMPRE_START, 30),
            (templates::QA_START, 30),
            (templates::TEXT_START, 30),
            (templates::DIALOG_HEADER, 30),
            (templates::UNANSWERABLE_OPTION, 30),
            (templates::NUMBERED, 10),
            (templates::NEXT_TURN, 10),
            (templates::OPTION_START, 10),
            (templates::READ_END, 1),
            (templates::QA_END, 1),
            (templates::DIALOG_BREAK, 1),
            (templates::OPTION_ITEM_END, 1),
        ] {
            assert!(pool.len() >= min, "{pool:?}");
        }
        let bare = templates::READ_START
            .iter()
            .filter(|s| **s == "{context}")
            .count();
        assert!(bare * 2 >= templates::READ_START.len() - 2);
        let empty = templates::COMPRE_START
            .iter()
            .filter(|s| s.is_empty())
            .count();
        assert!(empty * 2 >= templates::COMPRE_START.len() - 2);
        for s in templates::READ_START.iter().chain(templates::TEXT_START) {
            assert!(once(s, "{context}"), "{s}");
        }
        for s in templates::QA_START {
            assert!(once(s, "{qa_demos}"), "{s}");
        }
        for s in templates::NUMBERED {
            for key in ["{context}", "{questions}", "{answers}"] {
                assert!(once(s, key), "{s}");
            }
        }
        for s in templates::NEXT_TURN {
            for key in ["{context}", "{dialog}", "{next}"] {
                assert!(once(s, key), "{s}");
            }
        }
        for (pool, explained) in [
            (templates::INLINE_FEW_SHOT, false),
            (templates::INLINE_FEW_SHOT_EXPLAINED, true),
        ] {
            assert!(pool.len() >= 10);
            for t in pool {
                assert!(once(t.head, "{context}"), "{t:?}");
                for frame in [t.example, t.new_input] {
                    assert!(
                        once(frame, "{question}") && once(frame, "{answer}"),
                        "{t:?}"
                    );
                }
                assert_eq!(once(t.explanation, "{explanation}"), explained, "{t:?}");
            }
        }
        for n in templates::NUMBER_LABELS {
            assert!(once(n.question, "{i}") && once(n.answer, "{i}"), "{n:?}");
        }
        assert!(templates::SPEAKERS.len() >= 30);
        assert!(templates::OPTION_ITEM.len() >= 30);
        for &item in templates::OPTION_ITEM {
            assert_eq!(
                item.series == LabelSeries::Bullet,
                !item.label.contains("{}")
            );
        }
        for (pool, options, cot) in [
            (templates::PLAIN_PATTERNS, false, false),
            (templates::MC_PATTERNS, true, false),
            (templates::COT_PATTERNS, false, true),
            (templates::MC_COT_PATTERNS, true, true),
        ] {
            assert!(pool.len() >= 30);
            for p in pool {
                assert!(once(p.inputs, "{question}"), "{p:?}");
                assert_eq!(once(p.inputs, "{options}"), options, "{p:?}");
                assert!(once(p.targets, "{answer}"), "{p:?}");
                assert_eq!(once(p.targets, "{cot}"), cot, "{p:?}");
                assert!(!p.example_separator.is_empty());
            }
        }
    }
}
