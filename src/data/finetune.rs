//! Synthesizer fine-tuning sequences (PAPER.md §1.3): several one-shot examples from the same
//! source dataset packed into one document, so the model learns to continue a consistent task
//! pattern. The loss mask is set on the pairs (including every `</END>` and the EOS) and clear on
//! the BOS and the ` <CON> … </CON>\n\n` context block.

use anyhow::Result;

use super::records::Pair;
use super::synth_format::{context_block, pairs_block};
use super::tokenizer::Tokenizer;

/// One example as token ids with its loss mask (true = in the loss).
pub fn encode_example(
    tok: &Tokenizer,
    text: &str,
    pairs: &[Pair],
) -> Result<(Vec<u32>, Vec<bool>)> {
    // Encode the context block and the pairs as one string, then split the mask at the first token
    // that starts at or after the pairs, so token boundaries are exactly those of the whole example.
    let context = context_block(text);
    let whole = format!("{context}{}", pairs_block(pairs));
    let (ids, offsets) = tok.encode_with_offsets(&whole)?;
    let mut out_ids = Vec::with_capacity(ids.len() + 2);
    let mut mask = Vec::with_capacity(ids.len() + 2);
    if let Some(b) = tok.bos() {
        out_ids.push(b);
        mask.push(false);
    }
    for (id, (_, end)) in ids.iter().zip(offsets) {
        out_ids.push(*id);
        // End offsets: whitespace-only tokens may have trimmed (empty) spans at the boundary.
        mask.push(end > context.len());
    }
    if let Some(e) = tok.eos() {
        out_ids.push(e);
        mask.push(true);
    }
    Ok((out_ids, mask))
}

/// Pack examples (in order) into documents of at most `max_tokens` tokens each; an example longer
/// than `max_tokens` becomes a document of its own. Examples without pairs are skipped: they teach
/// the synthesizer nothing and would carry no loss.
pub fn pack_examples<'a, I>(
    tok: &Tokenizer,
    examples: I,
    max_tokens: usize,
) -> Result<Vec<(Vec<u32>, Vec<bool>)>>
where
    I: IntoIterator<Item = (&'a str, &'a [Pair])>,
{
    let mut docs = Vec::new();
    let mut cur: (Vec<u32>, Vec<bool>) = (Vec::new(), Vec::new());
    for (text, pairs) in examples {
        if pairs.is_empty() {
            continue;
        }
        let (ids, mask) = encode_example(tok, text, pairs)?;
        if !cur.0.is_empty() && cur.0.len() + ids.len() > max_tokens {
            docs.push(std::mem::take(&mut cur));
        }
        cur.0.extend(ids);
        cur.1.extend(mask);
    }
    if !cur.0.is_empty() {
        docs.push(cur);
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth_format::render_example;

    #[test]
    fn mask_covers_pairs_end_and_eos_but_not_context() {
        let dir = tempfile::tempdir().unwrap();
        let tok = crate::data::tokenizer::tests::small_tokenizer(dir.path());
        let pairs = vec![Pair {
            q: "Who jumps?".into(),
            a: "The quick fox.".into(),
        }];
        let (ids, mask) = encode_example(&tok, "The quick brown fox jumps.", &pairs).unwrap();
        assert_eq!(ids.len(), mask.len());
        assert_eq!(ids[0], tok.bos().unwrap());
        assert!(!mask[0]);
        assert_eq!(*ids.last().unwrap(), tok.eos().unwrap());
        assert!(*mask.last().unwrap());
        // The decoded masked part is exactly the pairs block; the unmasked part the context block.
        let first_in = mask.iter().position(|&m| m).unwrap();
        assert!(mask[first_in..].iter().all(|&m| m));
        let ctx = tok.decode(&ids[1..first_in], false).unwrap();
        assert_eq!(ctx, " <CON> The quick brown fox jumps. </CON>\n\n");
        let prs = tok.decode(&ids[first_in..ids.len() - 1], false).unwrap();
        assert_eq!(prs, "<QUE> Who jumps? <ANS> The quick fox. </END>");
        // And the whole decodes to the rendered example text.
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            render_example("The quick brown fox jumps.", &pairs)
        );
    }

    #[test]
    fn packs_several_examples_per_document_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let tok = crate::data::tokenizer::tests::small_tokenizer(dir.path());
        let pairs = vec![Pair {
            q: "Q?".into(),
            a: "A.".into(),
        }];
        let ex: Vec<(&str, &[Pair])> = (0..10).map(|_| ("The lazy dog.", &pairs[..])).collect();
        let one = encode_example(&tok, "The lazy dog.", &pairs)
            .unwrap()
            .0
            .len();
        let docs = pack_examples(&tok, ex, one * 3).unwrap();
        assert_eq!(docs.len(), 4); // 3 + 3 + 3 + 1
        assert_eq!(docs[0].0.len(), one * 3);
        assert_eq!(
            docs[0]
                .0
                .iter()
                .filter(|&&t| t == tok.bos().unwrap())
                .count(),
            3
        );
    }
}
