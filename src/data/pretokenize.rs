//! Pre-tokenization: splitting raw text into the words that BPE then encodes independently.
//!
//! `Splitter` reproduces a `Split` pre-tokenizer with `Isolated` behaviour (every regex match and
//! every gap between matches becomes its own non-empty piece). The two patterns that matter in
//! practice, GPT-2's ByteLevel regex and the cl100k / Llama-3 regex, run as hand-written scanners
//! with an ASCII fast path and `unicode-general-category` for other characters; any other pattern
//! runs through `fancy-regex`, the engine the `tokenizers` crate uses, so results stay identical.

use fancy_regex::Regex;
use unicode_general_category::{get_general_category, GeneralCategory};

/// The regex of the `tokenizers` ByteLevel pre-tokenizer (`use_regex: true`), i.e. GPT-2's.
pub const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

/// The cl100k_base / Llama-3 split regex.
pub const CL100K_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The character classes both hand-written scanners distinguish: `\p{L}`, `\p{N}`, `\s` and
/// everything else.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Class {
    Letter,
    Number,
    Space,
    Other,
}

const fn ascii_class(b: u8) -> Class {
    match b {
        b'a'..=b'z' | b'A'..=b'Z' => Class::Letter,
        b'0'..=b'9' => Class::Number,
        b'\t' | b'\n' | 0x0B | 0x0C | b'\r' | b' ' => Class::Space,
        _ => Class::Other,
    }
}

const ASCII_CLASS: [Class; 128] = {
    let mut table = [Class::Other; 128];
    let mut i = 0;
    while i < 128 {
        table[i] = ascii_class(i as u8);
        i += 1;
    }
    table
};

/// Unicode `White_Space`, the definition `\s` has in the `regex` crate (which `fancy-regex`
/// delegates to).
fn is_white_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | ' '
            | '\u{85}'
            | '\u{A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// The class of one character.
pub fn class_of(c: char) -> Class {
    if c.is_ascii() {
        return ASCII_CLASS[c as usize];
    }
    if is_white_space(c) {
        return Class::Space;
    }
    use GeneralCategory as G;
    match get_general_category(c) {
        G::UppercaseLetter
        | G::LowercaseLetter
        | G::TitlecaseLetter
        | G::ModifierLetter
        | G::OtherLetter => Class::Letter,
        G::DecimalNumber | G::LetterNumber | G::OtherNumber => Class::Number,
        _ => Class::Other,
    }
}

/// Decodes the character starting at byte `i` of valid UTF-8 and returns it with its length.
#[inline]
fn decode(b: &[u8], i: usize) -> (char, usize) {
    let b0 = b[i] as u32;
    let (cp, len) = if b0 < 0x80 {
        (b0, 1)
    } else if b0 < 0xE0 {
        (((b0 & 0x1F) << 6) | (b[i + 1] as u32 & 0x3F), 2)
    } else if b0 < 0xF0 {
        (
            ((b0 & 0x0F) << 12) | ((b[i + 1] as u32 & 0x3F) << 6) | (b[i + 2] as u32 & 0x3F),
            3,
        )
    } else {
        (
            ((b0 & 0x07) << 18)
                | ((b[i + 1] as u32 & 0x3F) << 12)
                | ((b[i + 2] as u32 & 0x3F) << 6)
                | (b[i + 3] as u32 & 0x3F),
            4,
        )
    };
    (char::from_u32(cp).unwrap_or('\u{FFFD}'), len)
}

/// Class and byte length of the character at byte `i`.
#[inline]
fn class_at(b: &[u8], i: usize) -> (Class, usize) {
    let b0 = b[i];
    if b0 < 0x80 {
        (ASCII_CLASS[b0 as usize], 1)
    } else {
        let (c, len) = decode(b, i);
        (class_of(c), len)
    }
}

/// End of the run of characters of class `class` starting at byte `i`.
#[inline]
fn run_end(b: &[u8], mut i: usize, class: Class) -> usize {
    while i < b.len() {
        let b0 = b[i];
        if b0 < 0x80 {
            if ASCII_CLASS[b0 as usize] != class {
                break;
            }
            i += 1;
        } else {
            let (c, len) = class_at(b, i);
            if c != class {
                break;
            }
            i += len;
        }
    }
    i
}

/// The end of the whitespace match `\s+(?!\S)|\s+` starting at `i`, given the end `j` and the
/// start `last` of the last character of the maximal whitespace run `[i, j)`.
#[inline]
fn trailing_space_end(n: usize, i: usize, j: usize, last: usize) -> usize {
    if j == n || last == i {
        j
    } else {
        last
    }
}

/// Maximal whitespace run from `i`: (end, start of its last character, end of its last `\r`/`\n`).
#[inline]
fn space_run(b: &[u8], mut i: usize) -> (usize, usize, Option<usize>) {
    let mut last = i;
    let mut newline = None;
    while i < b.len() {
        let (c, len) = class_at(b, i);
        if c != Class::Space {
            break;
        }
        if b[i] == b'\r' || b[i] == b'\n' {
            newline = Some(i + 1);
        }
        last = i;
        i += len;
    }
    (i, last, newline)
}

/// `'s|'t|'re|'ve|'m|'ll|'d` at `i` (where `b[i] == b'\''`), case-sensitive.
#[inline]
fn gpt2_contraction(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i + 1)? {
        b's' | b't' | b'm' | b'd' => Some(i + 2),
        b'r' | b'v' if b.get(i + 2) == Some(&b'e') => Some(i + 3),
        b'l' if b.get(i + 2) == Some(&b'l') => Some(i + 3),
        _ => None,
    }
}

/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)` at `i` (where `b[i] == b'\''`). Unicode case folding adds
/// U+017F LATIN SMALL LETTER LONG S to `s`.
#[inline]
fn cl100k_contraction(b: &[u8], i: usize) -> Option<usize> {
    let lower = |k: usize| b.get(k).map(|c| c.to_ascii_lowercase());
    match lower(i + 1)? {
        b's' | b't' | b'm' | b'd' => Some(i + 2),
        b'r' | b'v' if lower(i + 2) == Some(b'e') => Some(i + 3),
        b'l' if lower(i + 2) == Some(b'l') => Some(i + 3),
        0xC5 if b.get(i + 2) == Some(&0xBF) => Some(i + 3),
        _ => None,
    }
}

fn split_gpt2<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    let b = text.as_bytes();
    let n = b.len();
    let mut i = 0;
    while i < n {
        let (class, len) = class_at(b, i);
        let end = match class {
            Class::Letter | Class::Number => run_end(b, i + len, class),
            Class::Other => {
                let contraction = if b[i] == b'\'' {
                    gpt2_contraction(b, i)
                } else {
                    None
                };
                match contraction {
                    Some(e) => e,
                    None => run_end(b, i + len, Class::Other),
                }
            }
            Class::Space => {
                let next = if b[i] == b' ' && i + 1 < n {
                    Some(class_at(b, i + 1))
                } else {
                    None
                };
                match next {
                    Some((c, l)) if c != Class::Space => run_end(b, i + 1 + l, c),
                    _ => {
                        let (j, last, _) = space_run(b, i);
                        trailing_space_end(n, i, j, last)
                    }
                }
            }
        };
        f(&text[i..end]);
        i = end;
    }
}

/// End of `[\r\n]*` from `i`.
#[inline]
fn newlines_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && (b[i] == b'\r' || b[i] == b'\n') {
        i += 1;
    }
    i
}

fn split_cl100k<'a>(text: &'a str, mut f: impl FnMut(&'a str)) {
    let b = text.as_bytes();
    let n = b.len();
    let mut i = 0;
    while i < n {
        let (class, len) = class_at(b, i);
        let next = if i + len < n {
            Some(class_at(b, i + len))
        } else {
            None
        };
        let next_is_letter = matches!(next, Some((Class::Letter, _)));
        let end = match class {
            Class::Letter => run_end(b, i + len, Class::Letter),
            Class::Number => {
                let mut e = i + len;
                for _ in 0..2 {
                    if e >= n {
                        break;
                    }
                    let (c, l) = class_at(b, e);
                    if c != Class::Number {
                        break;
                    }
                    e += l;
                }
                e
            }
            Class::Other => {
                let contraction = if b[i] == b'\'' {
                    cl100k_contraction(b, i)
                } else {
                    None
                };
                match contraction {
                    Some(e) => e,
                    None if next_is_letter => run_end(b, i + len, Class::Letter),
                    None => newlines_end(b, run_end(b, i + len, Class::Other)),
                }
            }
            Class::Space => {
                let newline = b[i] == b'\r' || b[i] == b'\n';
                match next {
                    Some((Class::Letter, l)) if !newline => run_end(b, i + len + l, Class::Letter),
                    Some((Class::Other, l)) if b[i] == b' ' => {
                        newlines_end(b, run_end(b, i + 1 + l, Class::Other))
                    }
                    _ => {
                        let (j, last, newline_end) = space_run(b, i);
                        match newline_end {
                            Some(e) => e,
                            None => trailing_space_end(n, i, j, last),
                        }
                    }
                }
            }
        };
        f(&text[i..end]);
        i = end;
    }
}

/// One `Split` pre-tokenizer stage with `Isolated` behaviour.
#[derive(Debug)]
pub enum Splitter {
    /// Hand-written [`GPT2_PATTERN`].
    Gpt2,
    /// Hand-written [`CL100K_PATTERN`].
    Cl100k,
    /// Any other pattern, through `fancy-regex`.
    Regex(Regex),
}

impl Splitter {
    /// The splitter for a regex pattern: hand-written for the two known patterns, `fancy-regex`
    /// otherwise.
    pub fn new(pattern: &str) -> Result<Splitter, String> {
        match pattern {
            GPT2_PATTERN => Ok(Splitter::Gpt2),
            CL100K_PATTERN => Ok(Splitter::Cl100k),
            _ => Splitter::regex(pattern),
        }
    }

    /// Always the `fancy-regex` implementation of `pattern`.
    pub fn regex(pattern: &str) -> Result<Splitter, String> {
        Regex::new(pattern)
            .map(Splitter::Regex)
            .map_err(|e| format!("bad pre-tokenizer regex {pattern:?}: {e}"))
    }

    /// Calls `f` on every non-empty piece of `text`, in order; the pieces concatenate to `text`.
    #[inline]
    pub fn split<'a>(&self, text: &'a str, mut f: impl FnMut(&'a str)) {
        match self {
            Splitter::Gpt2 => split_gpt2(text, f),
            Splitter::Cl100k => split_cl100k(text, f),
            Splitter::Regex(re) => {
                let mut prev = 0;
                for m in re.find_iter(text) {
                    // A matching error (backtrack limit) ends the matches, as in `tokenizers`.
                    let Ok(m) = m else { break };
                    if m.start() > prev {
                        f(&text[prev..m.start()]);
                    }
                    if m.end() > m.start() {
                        f(m.as_str());
                    }
                    prev = m.end();
                }
                if prev < text.len() {
                    f(&text[prev..]);
                }
            }
        }
    }

    /// The pieces of `text` as a vector.
    pub fn split_to_vec<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut pieces = Vec::new();
        self.split(text, |p| pieces.push(p));
        pieces
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Every code point's class agrees with the regex engine's `\p{L}`, `\p{N}` and `\s`.
    #[test]
    fn classes_match_regex_engine() {
        let letter = Regex::new(r"^\p{L}$").expect("regex");
        let number = Regex::new(r"^\p{N}$").expect("regex");
        let space = Regex::new(r"^\s$").expect("regex");
        let mut buf = [0u8; 4];
        for cp in 0..=0x10FFFFu32 {
            let Some(c) = char::from_u32(cp) else {
                continue;
            };
            let s = c.encode_utf8(&mut buf);
            let expected = if letter.is_match(s).expect("match") {
                Class::Letter
            } else if number.is_match(s).expect("match") {
                Class::Number
            } else if space.is_match(s).expect("match") {
                Class::Space
            } else {
                Class::Other
            };
            assert_eq!(class_of(c), expected, "U+{cp:04X}");
        }
    }

    fn check(pattern: &str, text: &str) {
        let fast = Splitter::new(pattern).expect("pattern");
        let slow = Splitter::regex(pattern).expect("pattern");
        assert!(!matches!(fast, Splitter::Regex(_)));
        assert_eq!(
            fast.split_to_vec(text),
            slow.split_to_vec(text),
            "text {text:?}"
        );
    }

    const SAMPLES: &[&str] = &[
        "",
        "Hello world",
        "  leading and trailing  ",
        "I'm sure it's what they'd've said: 'Sll 'LL 'Re 'vE 'ſ 'x",
        "don't DON'T Don'T '''s ''s ' s",
        "x = 1234567 + 3.14159; // c0d3\n\tfoo(bar)\r\n\r\n  baz",
        "\n\n\n   \n  \t\t x\r\n",
        "emoji 😀👍🏽 and CJK 漢字かなカナ 한국어",
        "Arabic مرحبا بالعالم ١٢٣٤ and Hindi नमस्ते",
        "combining e\u{301} a\u{308}\u{301} café naïve Ǆemal",
        "nbsp\u{a0}x em\u{2003}space\u{3000}ideo \u{85}nel \u{1c}fs",
        "<|endoftext|>done  \"quoted\"  (paren) [brack] ¿qué? ¡sí!",
        "    ",
        " ",
        "a",
        "!!!\n\n?? ..\r\r\n",
        "  !x \n!\n ½ ⅷ ²³ 12345678901",
    ];

    #[test]
    fn gpt2_matches_regex() {
        for s in SAMPLES {
            check(GPT2_PATTERN, s);
        }
    }

    #[test]
    fn cl100k_matches_regex() {
        for s in SAMPLES {
            check(CL100K_PATTERN, s);
        }
    }

    const ALPHABET: &[&str] = &[
        "a", "b", "s", "t", "S", "T", "L", "l", "d", "D", "m", "r", "e", "v", "E", "R", "V", "M",
        "z", "Q", "0", "1", "7", "9", "'", "'", "'", ".", ",", "!", "?", "-", "(", "\"", "#", " ",
        " ", " ", " ", "\n", "\n", "\r", "\t", "\u{b}", "\u{c}", "é", "ſ", "K", "ß", "漢", "😀",
        "\u{301}", "\u{a0}", "\u{3000}", "١", "½", "Ⅻ", "\u{85}", "\u{200b}", "\u{1c}", "_", "€",
    ];

    fn random_text(rng: &mut Rng, max_len: usize) -> String {
        let len = rng.index(max_len + 1);
        (0..len)
            .map(|_| ALPHABET[rng.index(ALPHABET.len())])
            .collect()
    }

    #[test]
    fn fuzz_against_fancy_regex() {
        let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
        for _ in 0..5000 {
            let text = random_text(&mut rng, 40);
            check(GPT2_PATTERN, &text);
            check(CL100K_PATTERN, &text);
        }
    }

    #[test]
    fn other_patterns_use_fancy_regex() {
        let s = Splitter::new(r"\d+").expect("pattern");
        assert!(matches!(s, Splitter::Regex(_)));
        assert_eq!(s.split_to_vec("ab12cd3"), vec!["ab", "12", "cd", "3"]);
    }
}
