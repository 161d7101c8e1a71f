//! The instruction synthesizer's text format, fixed by the released synthesizer model
//! (Cheng et al. 2024; DESIGN.md §3, PAPER.md §1.3–1.6): rendering prompts, one-shot examples and
//! few-shot sequences, and parsing a generation back into pairs. The strings here are exact; do not
//! "improve" them — the synthesizer was trained on them.
//!
//! `<s>` / `</s>` are the tokenizer's BOS / EOS. The text renderers write them literally (what the
//! authors' code feeds the model); the token-level renderer in `data::finetune` emits BOS/EOS ids
//! once instead, whatever the tokenizer calls them.

use std::collections::HashSet;

use super::records::Pair;

pub const BOS_TEXT: &str = "<s>";
pub const EOS_TEXT: &str = "</s>";
pub const CON_OPEN: &str = "<CON>";
pub const CON_CLOSE: &str = "</CON>";
pub const QUE: &str = "<QUE>";
pub const ANS: &str = "<ANS>";
pub const END: &str = "</END>";
/// Joins the context block and the pairs, and consecutive pairs.
pub const PAIR_SEPARATOR: &str = "\n\n";

/// The context block without BOS: ` <CON> {text} </CON>\n\n` (note the leading space).
pub fn context_block(text: &str) -> String {
    format!(" {CON_OPEN} {text} {CON_CLOSE}{PAIR_SEPARATOR}")
}

/// One pair: `<QUE> {q} <ANS> {a} </END>`.
pub fn pair_block(p: &Pair) -> String {
    format!("{QUE} {} {ANS} {} {END}", p.q, p.a)
}

/// The pairs joined by `\n\n`.
pub fn pairs_block(pairs: &[Pair]) -> String {
    pairs
        .iter()
        .map(pair_block)
        .collect::<Vec<_>>()
        .join(PAIR_SEPARATOR)
}

/// Zero-shot prompt for one raw text: `<s> <CON> {text} </CON>\n\n`.
pub fn render_prompt(text: &str) -> String {
    format!("{BOS_TEXT}{}", context_block(text))
}

/// One-shot example: `<s> <CON> {text} </CON>\n\n<QUE> q <ANS> a </END>\n\n…</END></s>`.
pub fn render_example(text: &str, pairs: &[Pair]) -> String {
    format!("{}{}{EOS_TEXT}", render_prompt(text), pairs_block(pairs))
}

/// Few-shot sequence: examples rendered identically and concatenated (`…</s><s> <CON> …`).
/// With `prompt_text`, the sequence ends with that text's zero-shot prompt (the multi-round
/// synthesis prompt).
pub fn render_few_shot(examples: &[(&str, &[Pair])], prompt_text: Option<&str>) -> String {
    let mut out: String = examples.iter().map(|(t, p)| render_example(t, p)).collect();
    if let Some(t) = prompt_text {
        out.push_str(&render_prompt(t));
    }
    out
}

/// Parse a synthesizer generation into pairs, by the authors' rules: split on `</END>`; drop the
/// last fragment unless the text ends with `</END>` (it was cut off); a fragment must contain
/// exactly one `<ANS>`, its left part (stripped) must start with `<QUE>`, and the answer (stripped)
/// must be non-empty; questions that are empty after removing `<QUE>` are dropped as well; later
/// duplicates of a question (compared case-insensitively) are dropped.
pub fn parse_generation(generation: &str) -> Vec<Pair> {
    let mut fragments: Vec<&str> = generation.split(END).collect();
    if !generation.ends_with(END) {
        fragments.pop();
    }
    let mut seen = HashSet::new();
    let mut pairs = Vec::new();
    for frag in fragments {
        if frag.matches(ANS).count() != 1 {
            continue;
        }
        let (left, right) = frag.split_once(ANS).expect("exactly one <ANS>");
        let (left, answer) = (left.trim(), right.trim());
        let Some(question) = left.strip_prefix(QUE).map(str::trim) else {
            continue;
        };
        if question.is_empty() || answer.is_empty() {
            continue;
        }
        if seen.insert(question.to_lowercase()) {
            pairs.push(Pair {
                q: question.to_string(),
                a: answer.to_string(),
            });
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(q: &str, a: &str) -> Pair {
        Pair {
            q: q.into(),
            a: a.into(),
        }
    }

    #[test]
    fn renders_one_shot_and_few_shot_exactly() {
        let pairs = [
            p("Who?", "Ada."),
            p("When?\nOptions:\n- 1815\n- 1900", "1815"),
        ];
        assert_eq!(
            render_example("Ada was born in 1815.", &pairs),
            "<s> <CON> Ada was born in 1815. </CON>\n\n<QUE> Who? <ANS> Ada. </END>\n\n\
             <QUE> When?\nOptions:\n- 1815\n- 1900 <ANS> 1815 </END></s>"
        );
        assert_eq!(render_prompt("T"), "<s> <CON> T </CON>\n\n");
        assert_eq!(
            render_few_shot(&[("A", &pairs[..1]), ("B", &pairs[..1])], Some("C")),
            "<s> <CON> A </CON>\n\n<QUE> Who? <ANS> Ada. </END></s>\
             <s> <CON> B </CON>\n\n<QUE> Who? <ANS> Ada. </END></s>\
             <s> <CON> C </CON>\n\n"
        );
    }

    #[test]
    fn parse_round_trips_rendered_pairs() {
        let pairs = vec![p("What is 2+2?", "4"), p("Name a colour.", "Blue")];
        assert_eq!(parse_generation(&pairs_block(&pairs)), pairs);
    }

    #[test]
    fn parse_drops_truncated_tail_only_when_unterminated() {
        let g = "<QUE> A? <ANS> a </END>\n\n<QUE> B? <ANS> b </END>\n\n<QUE> C? <ANS> c";
        assert_eq!(parse_generation(g), vec![p("A?", "a"), p("B?", "b")]);
        let g = "<QUE> A? <ANS> a </END>\n\n<QUE> B? <ANS> b </END>";
        assert_eq!(parse_generation(g), vec![p("A?", "a"), p("B?", "b")]);
    }

    #[test]
    fn parse_skips_malformed_fragments_and_duplicates() {
        let g = "<QUE> A? <ANS> a </END>\n\n\
                 <QUE> two <ANS> x <ANS> y </END>\n\n\
                 no marker <ANS> z </END>\n\n\
                 <QUE> empty answer <ANS>   </END>\n\n\
                 <QUE> <ANS> no question </END>\n\n\
                 <QUE> no ans at all </END>\n\n\
                 <QUE> a? <ANS> duplicate, other case </END>\n\n\
                 <QUE> D? <ANS> d\nmore </END>";
        assert_eq!(parse_generation(g), vec![p("A?", "a"), p("D?", "d\nmore")]);
    }

    #[test]
    fn parse_of_text_without_pairs_is_empty() {
        assert!(parse_generation("").is_empty());
        assert!(parse_generation("just some text").is_empty());
        assert!(parse_generation("</END>").is_empty());
    }
}
