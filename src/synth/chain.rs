//! Multi-round synthesis chains, as the authors define them (PAPER.md §1.5): the N raw texts are
//! split into M contiguous chunks of ceil(N/M); round r processes chunk r, and text i of round r
//! continues chain i. A text is prompted after its chain's previous text and pairs (and the texts
//! linked before that) when the previous text yielded pairs and the whole prompt fits the context
//! minus the generation budget, counted in real tokens; otherwise zero-shot. A new entry is linked
//! to its predecessor (`inherit_from_prev`) when it was prompted few-shot and yielded pairs, so a
//! round with no pairs breaks the chain. Linked entries render into one few-shot pre-training
//! document; this module names each such group with a chain id.
//!
//! Pure bookkeeping over token ids; generation and files live in `synth::mod`.

use crate::data::records::Pair;

/// Chunk size and chain count for `n` texts over `rounds` rounds.
pub fn chain_count(n: usize, rounds: usize) -> usize {
    n.div_ceil(rounds.max(1))
}

/// Indices (into the valid texts) of chain `i`'s texts, round by round. Chains past the last
/// chunk's length have fewer entries and are carried through the later rounds unchanged.
pub fn chain_members(i: usize, n: usize, rounds: usize) -> Vec<usize> {
    let c = chain_count(n, rounds);
    (0..rounds)
        .map(|r| r * c + i)
        .filter(|&idx| idx < n)
        .collect()
}

/// One synthesized text of a chain.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub text: String,
    pub pairs: Vec<Pair>,
    /// This entry rendered as a one-shot example (BOS, context block, pairs, EOS), for the
    /// few-shot prompt of the next round; empty when it has no pairs.
    pub example: Vec<u32>,
    /// Prompted after its predecessor and yielded pairs: same document as the predecessor.
    pub inherit_from_prev: bool,
    /// The next entry was prompted after this one.
    pub followed_by_next: bool,
}

/// The prompt for a chain's next text: the linked tail of `entries` as few-shot examples before
/// `zero_shot` when the last entry has pairs and the total fits `budget` tokens (context minus
/// the generation budget); else `zero_shot` alone. Returns the prompt and whether it is
/// few-shot.
pub fn chain_prompt(entries: &[Entry], zero_shot: &[u32], budget: usize) -> (Vec<u32>, bool) {
    if entries.last().is_none_or(|e| e.pairs.is_empty()) {
        return (zero_shot.to_vec(), false);
    }
    let mut start = entries.len() - 1;
    while start > 0 && entries[start].inherit_from_prev {
        start -= 1;
    }
    let prefix: usize = entries[start..].iter().map(|e| e.example.len()).sum();
    if prefix + zero_shot.len() > budget {
        return (zero_shot.to_vec(), false);
    }
    let mut prompt = Vec::with_capacity(prefix + zero_shot.len());
    for e in &entries[start..] {
        prompt.extend_from_slice(&e.example);
    }
    prompt.extend_from_slice(zero_shot);
    (prompt, true)
}

/// Append a chain's new entry after its generation: `few_shot` says whether it was prompted
/// after the previous entries.
pub fn push_entry(entries: &mut Vec<Entry>, mut entry: Entry, few_shot: bool) {
    if few_shot {
        if let Some(prev) = entries.last_mut() {
            prev.followed_by_next = true;
        }
    }
    entry.inherit_from_prev = few_shot && !entry.pairs.is_empty();
    entries.push(entry);
}

/// Chain ids of a finished chain's entries: entries linked by `inherit_from_prev` share one id,
/// `chain_index · rounds + round of the group's first entry` (unique across the file).
pub fn group_ids(chain_index: usize, rounds: usize, entries: &[Entry]) -> Vec<u64> {
    let mut head = 0;
    entries
        .iter()
        .enumerate()
        .map(|(r, e)| {
            if !e.inherit_from_prev {
                head = r;
            }
            (chain_index * rounds + head) as u64
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(pairs: usize, example_len: usize) -> Entry {
        Entry {
            text: "t".into(),
            pairs: (0..pairs)
                .map(|i| Pair {
                    q: format!("q{i}"),
                    a: "a".into(),
                })
                .collect(),
            example: vec![7; if pairs > 0 { example_len } else { 0 }],
            inherit_from_prev: false,
            followed_by_next: false,
        }
    }

    #[test]
    fn chunks_are_contiguous_and_short_chains_are_carried() {
        // 7 texts over 3 rounds: chunks of 3 — [0 1 2] [3 4 5] [6]; chain 0 gets 0, 3, 6.
        assert_eq!(chain_count(7, 3), 3);
        assert_eq!(chain_members(0, 7, 3), vec![0, 3, 6]);
        assert_eq!(chain_members(1, 7, 3), vec![1, 4]);
        assert_eq!(chain_members(2, 7, 3), vec![2, 5]);
        // Every text in exactly one chain.
        let mut all: Vec<usize> = (0..3).flat_map(|i| chain_members(i, 7, 3)).collect();
        all.sort();
        assert_eq!(all, (0..7).collect::<Vec<_>>());
        assert_eq!(chain_members(0, 1, 2), vec![0]);
        assert_eq!(chain_count(0, 2), 0);
    }

    #[test]
    fn prompt_is_few_shot_when_the_previous_text_had_pairs_and_it_fits() {
        let zero = vec![1, 2, 3];
        let entries = vec![entry(2, 10)];
        let (p, few) = chain_prompt(&entries, &zero, 13);
        assert!(few);
        assert_eq!(p.len(), 13);
        assert_eq!(&p[10..], &zero[..]);
    }

    #[test]
    fn prompt_is_zero_shot_when_it_does_not_fit() {
        let zero = vec![1, 2, 3];
        let (p, few) = chain_prompt(&[entry(2, 10)], &zero, 12);
        assert!(!few);
        assert_eq!(p, zero);
    }

    #[test]
    fn prompt_is_zero_shot_after_a_round_without_pairs_and_the_chain_breaks() {
        let zero = vec![1, 2, 3];
        let mut entries = vec![entry(0, 10)];
        let (p, few) = chain_prompt(&entries, &zero, 1000);
        assert!((p.as_slice(), few) == (zero.as_slice(), false));
        push_entry(&mut entries, entry(3, 5), few);
        assert!(!entries[1].inherit_from_prev);
        assert!(!entries[0].followed_by_next);
        assert_eq!(group_ids(4, 2, &entries), vec![8, 9]);
    }

    #[test]
    fn linked_entries_are_all_prepended_and_share_a_chain_id() {
        let zero = vec![1];
        let mut entries = vec![entry(1, 4)];
        let (_, few) = chain_prompt(&entries, &zero, 100);
        push_entry(&mut entries, entry(2, 6), few);
        assert!(entries[1].inherit_from_prev && entries[0].followed_by_next);
        // Round 3: both earlier entries precede the prompt (4 + 6 + 1 tokens).
        let (p, few) = chain_prompt(&entries, &zero, 100);
        assert!(few);
        assert_eq!(p.len(), 11);
        push_entry(&mut entries, entry(1, 3), few);
        assert_eq!(group_ids(5, 3, &entries), vec![15, 15, 15]);
        // A few-shot prompt whose output has no pairs: followed, but not linked.
        let mut e2 = vec![entry(1, 4)];
        push_entry(&mut e2, entry(0, 0), true);
        assert!(e2[0].followed_by_next && !e2[1].inherit_from_prev);
        assert_eq!(group_ids(0, 2, &e2), vec![0, 1]);
    }

    #[test]
    fn only_the_linked_tail_is_prepended() {
        // Entry 0 and 1 are not linked (1 was zero-shot); round 3 sees entry 1 only.
        let zero = vec![1];
        let mut entries = vec![entry(1, 4)];
        push_entry(&mut entries, entry(2, 6), false);
        let (p, few) = chain_prompt(&entries, &zero, 100);
        assert!(few);
        assert_eq!(p.len(), 7);
    }
}
