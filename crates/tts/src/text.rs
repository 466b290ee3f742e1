//! Text preparation shared by engines: normalization (numbers, common
//! abbreviations and symbols become words) and segmentation of streamed
//! text into chunks that can be synthesized one at a time: sentences; for the
//! first sentence of an utterance its clauses, so the first audio comes after
//! the first few words rather than the whole sentence; and long later
//! sentences at their clause boundaries, so a busy engine stays ahead.

/// A chunk longer than this is cut at a word boundary even without punctuation.
const MAX_CHUNK_CHARS: usize = 300;
/// After the first sentence, a sentence is cut at a clause boundary once the
/// chunk is this long: short sentences keep their prosody whole, long ones
/// come in pieces a loaded engine can keep ahead of playback with.
const LONG_CLAUSE_CHARS: usize = 60;

/// Abbreviations whose period does not end a sentence, with their spoken form.
const ABBREVIATIONS: &[(&str, &str)] = &[
    ("Mr.", "Mister"),
    ("Mrs.", "Missus"),
    ("Ms.", "Miz"),
    ("Dr.", "Doctor"),
    ("Prof.", "Professor"),
    ("Jr.", "Junior"),
    ("Sr.", "Senior"),
    ("St.", "Saint"),
    ("vs.", "versus"),
    ("etc.", "et cetera"),
    ("e.g.", "for example"),
    ("i.e.", "that is"),
    ("approx.", "approximately"),
    ("No.", "number"),
];

/// A piece of text ready for synthesis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub text: String,
    /// It ends a sentence (a longer pause may follow), not just a clause.
    pub ends_sentence: bool,
    /// Where `text` begins in everything pushed, in characters: what a
    /// listener has heard can be told as "up to this sentence".
    pub start_char: usize,
}

/// Splits streamed text into chunks as soon as each is complete.
#[derive(Debug, Default)]
pub struct Segmenter {
    buffer: String,
    emitted: usize,
    /// Characters taken out of `buffer` so far.
    consumed_chars: usize,
}

fn is_abbreviation_end(before: &str) -> bool {
    let word = before.rsplit(|c: char| c.is_whitespace() || c == '(' || c == '"').next().unwrap_or("");
    if ABBREVIATIONS.iter().any(|(a, _)| a.eq_ignore_ascii_case(word)) {
        return true;
    }
    // An initial such as "J." in "J. Smith".
    let letters: Vec<char> = word.chars().filter(|c| *c != '.').collect();
    letters.len() == 1 && letters[0].is_uppercase()
}

impl Segmenter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, text: &str) {
        self.buffer.push_str(text);
    }

    pub fn is_empty(&self) -> bool {
        self.buffer.trim().is_empty()
    }

    /// The next complete chunk; with `finished`, whatever remains is one.
    pub fn next_chunk(&mut self, finished: bool) -> Option<Chunk> {
        loop {
            let (end, ends_sentence) = match self.boundary(finished) {
                Some(b) => b,
                None if finished && !self.buffer.trim().is_empty() => (self.buffer.len(), true),
                None => return None,
            };
            let piece = &self.buffer[..end];
            let text = piece.trim().to_string();
            let start_char = self.consumed_chars + piece.chars().take_while(|c| c.is_whitespace()).count();
            self.consumed_chars += piece.chars().count();
            self.buffer.drain(..end);
            if text.chars().any(char::is_alphanumeric) {
                self.emitted += 1;
                return Some(Chunk { text, ends_sentence, start_char });
            }
            // Punctuation or blanks alone: nothing to say; look further.
            if self.buffer.trim().is_empty() {
                self.consumed_chars += self.buffer.chars().count();
                self.buffer.clear();
                return None;
            }
        }
    }

    /// Byte index just after the first boundary, and whether it ends a sentence.
    fn boundary(&self, finished: bool) -> Option<(usize, bool)> {
        let s = &self.buffer;
        let first = self.emitted == 0;
        let mut chars = s.char_indices().peekable();
        let mut last_space = None;
        while let Some((i, c)) = chars.next() {
            let next = chars.peek().map(|&(_, n)| n);
            // The boundary must be followed by a blank (or be the end of finished text),
            // so "3.14" and "e.g." inside a word do not split.
            let at_gap = match next {
                Some(n) => n.is_whitespace() || (matches!(n, '"' | '\'' | ')') && !n.is_alphanumeric()),
                None => finished,
            };
            if c.is_whitespace() {
                // Just after it: blanks such as U+00A0 and U+0085 are two bytes.
                last_space = Some(i + c.len_utf8());
            }
            if c == '\n' {
                return Some((i + 1, true));
            }
            let end = i + c.len_utf8();
            if matches!(c, '.' | '!' | '?') && at_gap && !(c == '.' && is_abbreviation_end(&s[..end])) {
                // Include closing quotes or brackets.
                let closing: usize = s[end..]
                    .chars()
                    .take_while(|q| matches!(q, '"' | '\'' | ')' | '”' | '’'))
                    .map(char::len_utf8)
                    .sum();
                return Some((end + closing, true));
            }
            if (first || end >= LONG_CLAUSE_CHARS) && matches!(c, ',' | ';' | ':' | '—') && at_gap && next.is_some() {
                return Some((end, false));
            }
            if end >= MAX_CHUNK_CHARS
                && let Some(sp) = last_space
            {
                return Some((sp, false));
            }
        }
        None
    }
}

const ONES: [&str; 20] = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [&str; 10] = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"];
const SCALES: [&str; 6] = ["", "thousand", "million", "billion", "trillion", "quadrillion"];

fn below_thousand(n: u64, out: &mut Vec<String>) {
    let (h, rest) = (n / 100, n % 100);
    if h > 0 {
        out.push(ONES[h as usize].into());
        out.push("hundred".into());
    }
    if rest >= 20 {
        let t = TENS[(rest / 10) as usize];
        match rest % 10 {
            0 => out.push(t.into()),
            u => out.push(format!("{t}-{}", ONES[u as usize])),
        }
    } else if rest > 0 {
        out.push(ONES[rest as usize].into());
    }
}

/// A non-negative integer in words: 1234 → "one thousand two hundred thirty-four".
pub fn cardinal(n: u64) -> String {
    if n == 0 {
        return "zero".into();
    }
    let mut groups = Vec::new();
    let mut m = n;
    while m > 0 {
        groups.push(m % 1000);
        m /= 1000;
    }
    let mut words = Vec::new();
    for (scale, &g) in groups.iter().enumerate().rev() {
        if g == 0 {
            continue;
        }
        below_thousand(g, &mut words);
        if scale > 0 {
            words.push(SCALES[scale.min(SCALES.len() - 1)].into());
        }
    }
    words.join(" ")
}

/// 1 → "first", 22 → "twenty-second".
pub fn ordinal(n: u64) -> String {
    let c = cardinal(n);
    let (head, last) = match c.rfind([' ', '-']) {
        Some(i) => c.split_at(i + 1),
        None => ("", c.as_str()),
    };
    let last = match last {
        "one" => "first".to_string(),
        "two" => "second".to_string(),
        "three" => "third".to_string(),
        "five" => "fifth".to_string(),
        "eight" => "eighth".to_string(),
        "nine" => "ninth".to_string(),
        "twelve" => "twelfth".to_string(),
        w if w.ends_with('y') => format!("{}ieth", &w[..w.len() - 1]),
        w => format!("{w}th"),
    };
    format!("{head}{last}")
}

fn digits_words(digits: &str) -> String {
    digits.chars().filter_map(|d| d.to_digit(10)).map(|d| ONES[d as usize]).collect::<Vec<_>>().join(" ")
}

/// Reads a number token starting at `s` (digits, optional thousands commas,
/// optional decimals); returns (integer digits, decimal digits, bytes used).
fn scan_number(s: &str) -> (String, String, usize) {
    let b = s.as_bytes();
    let mut i = 0;
    let mut int = String::new();
    while i < b.len() {
        if b[i].is_ascii_digit() {
            int.push(b[i] as char);
            i += 1;
        } else if b[i] == b','
            && i + 3 < b.len() + 1
            && b[i + 1..].iter().take(3).all(u8::is_ascii_digit)
            && b.get(i + 4).is_none_or(|c| !c.is_ascii_digit())
            && !int.is_empty()
        {
            i += 1; // thousands separator
        } else {
            break;
        }
    }
    let mut dec = String::new();
    if i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            dec.push(b[i] as char);
            i += 1;
        }
    }
    (int, dec, i)
}

fn number_words(int: &str, dec: &str) -> String {
    let whole = match int.parse::<u64>() {
        Ok(n) if int.len() <= 18 => cardinal(n),
        _ => digits_words(int),
    };
    if dec.is_empty() { whole } else { format!("{whole} point {}", digits_words(dec)) }
}

/// Makes text speakable: numbers, ordinals, currency, percentages, common
/// abbreviations and symbols become words. Everything else is kept as is.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        let at_word_start = out.chars().last().is_none_or(|p| !p.is_alphanumeric());
        // Abbreviations.
        if at_word_start
            && let Some((abbr, spoken)) = ABBREVIATIONS.iter().find(|(a, _)| {
                rest.len() >= a.len()
                    && rest.is_char_boundary(a.len())
                    && rest[..a.len()].eq_ignore_ascii_case(a)
                    && rest[a.len()..].chars().next().is_none_or(|n| !n.is_alphanumeric())
            })
        {
            // "No." is only "number" before a digit.
            let next_digit = rest[abbr.len()..].trim_start().chars().next().is_some_and(|n| n.is_ascii_digit());
            if *abbr != "No." || next_digit {
                out.push_str(spoken);
                rest = &rest[abbr.len()..];
                continue;
            }
        }
        // Currency before a number.
        let currency = match c {
            '$' => Some(("dollar", "dollars", "cent", "cents")),
            '€' => Some(("euro", "euros", "cent", "cents")),
            '£' => Some(("pound", "pounds", "penny", "pence")),
            _ => None,
        };
        if let Some((one, many, sub_one, sub_many)) = currency {
            let after = &rest[c.len_utf8()..];
            if after.starts_with(|d: char| d.is_ascii_digit()) {
                let (int, dec, used) = scan_number(after);
                let n: u64 = int.parse().unwrap_or(0);
                out.push_str(&number_words(&int, ""));
                out.push(' ');
                out.push_str(if n == 1 { one } else { many });
                if dec.len() == 2 && dec != "00" {
                    let cents: u64 = dec.parse().unwrap_or(0);
                    out.push_str(&format!(" and {} {}", cardinal(cents), if cents == 1 { sub_one } else { sub_many }));
                } else if !dec.is_empty() && dec != "00" {
                    out.push_str(&format!(" point {}", digits_words(&dec)));
                }
                rest = &after[used..];
                continue;
            }
        }
        // Numbers (a leading minus at a word start), ordinals, percentages.
        let negative = c == '-' && at_word_start && rest[1..].starts_with(|d: char| d.is_ascii_digit());
        if c.is_ascii_digit() || negative {
            let body = if negative { &rest[1..] } else { rest };
            let (int, dec, mut used) = scan_number(body);
            if negative {
                out.push_str("minus ");
                used += 1;
            }
            let after = &rest[used..];
            let suffix: String = after.chars().take(2).collect::<String>().to_lowercase();
            let ordinal_suffix = dec.is_empty()
                && ["st", "nd", "rd", "th"].contains(&suffix.as_str())
                && after[2.min(after.len())..].chars().next().is_none_or(|n| !n.is_alphanumeric());
            if ordinal_suffix && let Ok(n) = int.parse::<u64>() {
                out.push_str(&ordinal(n));
                rest = &after[2..];
                continue;
            }
            out.push_str(&number_words(&int, &dec));
            rest = after;
            if let Some(r) = rest.strip_prefix('%') {
                out.push_str(" percent");
                rest = r;
            }
            continue;
        }
        let word = match c {
            '&' => Some(" and "),
            '%' => Some(" percent "),
            '+' => Some(" plus "),
            '@' => Some(" at "),
            '=' => Some(" equals "),
            '#' => Some(" number "),
            _ => None,
        };
        match word {
            Some(w) => out.push_str(w),
            None => out.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    // Collapse the blanks the replacements introduced.
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `segmenter` fuzz target: a long run whose last blank is a
    /// two-byte one (U+0085 here; U+00A0 alike) was cut inside that character.
    #[test]
    fn a_long_run_is_cut_after_a_multibyte_blank() {
        for blank in ['\u{85}', '\u{a0}', '\u{3000}'] {
            let text = format!("{}{blank}{}", "4".repeat(120), "8".repeat(400));
            let mut s = Segmenter::new();
            s.push(&text);
            let mut chunks = Vec::new();
            while let Some(c) = s.next_chunk(true) {
                chunks.push(c);
            }
            let said: String = chunks.iter().map(|c| c.text.as_str()).collect();
            assert_eq!(said.chars().filter(|c| c.is_alphanumeric()).count(), 520, "{blank:?}");
            assert_eq!(chunks[0].text, "4".repeat(120));
        }
    }

    fn chunks(parts: &[&str]) -> Vec<(String, bool)> {
        let mut s = Segmenter::new();
        let mut out = Vec::new();
        for p in parts {
            s.push(p);
            while let Some(c) = s.next_chunk(false) {
                out.push((c.text, c.ends_sentence));
            }
        }
        while let Some(c) = s.next_chunk(true) {
            out.push((c.text, c.ends_sentence));
        }
        out
    }

    #[test]
    fn chunks_know_where_they_start_in_the_pushed_text() {
        let parts = ["  Héllo, wörld. ", "Next one ", "is here!  ... And the", " last"];
        let whole: String = parts.concat();
        let mut s = Segmenter::new();
        let mut seen = Vec::new();
        for p in parts {
            s.push(p);
            while let Some(c) = s.next_chunk(false) {
                seen.push(c);
            }
        }
        while let Some(c) = s.next_chunk(true) {
            seen.push(c);
        }
        assert_eq!(seen.len(), 4, "{seen:?}");
        for c in seen {
            let at: String = whole.chars().skip(c.start_char).take(c.text.chars().count()).collect();
            assert_eq!(at, c.text);
        }
    }

    #[test]
    fn numbers_become_words() {
        assert_eq!(cardinal(0), "zero");
        assert_eq!(cardinal(42), "forty-two");
        assert_eq!(cardinal(1_234_567), "one million two hundred thirty-four thousand five hundred sixty-seven");
        assert_eq!(ordinal(1), "first");
        assert_eq!(ordinal(22), "twenty-second");
        assert_eq!(ordinal(100), "one hundredth");
        assert_eq!(ordinal(40), "fortieth");
        assert_eq!(
            normalize("I have 3 cats and 1,024 bytes."),
            "I have three cats and one thousand twenty-four bytes."
        );
        assert_eq!(normalize("Pi is 3.14, it's -2 today"), "Pi is three point one four, it's minus two today");
        assert_eq!(normalize("It costs $5.50 or $1"), "It costs five dollars and fifty cents or one dollar");
        assert_eq!(normalize("50% of the 21st class"), "fifty percent of the twenty-first class");
        assert_eq!(normalize("Dr. Smith & Mr. Jones"), "Doctor Smith and Mister Jones");
        assert_eq!(normalize("No. 5, no."), "number five, no.");
        assert_eq!(normalize("a+b=c @home #1"), "a plus b equals c at home number one");
        assert_eq!(normalize("well-known 10-4"), "well-known ten-four");
    }

    #[test]
    fn first_sentence_splits_at_clauses_then_by_sentence() {
        assert_eq!(
            chunks(&["Sure, I can help. First, open the door; then", " wait. Done!"]),
            vec![
                ("Sure,".into(), false),
                ("I can help.".into(), true),
                ("First, open the door; then wait.".into(), true),
                ("Done!".into(), true)
            ]
        );
    }

    #[test]
    fn long_later_sentences_split_at_clauses() {
        let long = "Then we go on through a rather long sentence with many words, and only here, at last, does it end.";
        let got = chunks(&["Hi. ", long]);
        assert_eq!(got[0], ("Hi.".into(), true));
        assert_eq!(got[1], ("Then we go on through a rather long sentence with many words,".into(), false));
        assert_eq!(got[2], ("and only here, at last, does it end.".into(), true));
    }

    #[test]
    fn no_split_inside_numbers_abbreviations_or_initials() {
        assert_eq!(
            chunks(&["Pi is 3.14 and Dr. Who met J. K. Rowling. Next."]),
            vec![("Pi is 3.14 and Dr. Who met J. K. Rowling.".into(), true), ("Next.".into(), true)]
        );
    }

    #[test]
    fn waits_for_the_gap_after_a_stop_while_streaming() {
        let mut s = Segmenter::new();
        s.push("It is 3.");
        assert_eq!(s.next_chunk(false), None, "3. may be 3.14");
        s.push("14 now. And");
        assert_eq!(s.next_chunk(false).unwrap().text, "It is 3.14 now.");
        assert_eq!(s.next_chunk(false), None);
        assert_eq!(s.next_chunk(true).unwrap().text, "And");
        assert_eq!(s.next_chunk(true), None);
    }

    #[test]
    fn blanks_and_bare_punctuation_say_nothing_and_long_runs_are_cut() {
        assert!(chunks(&["  ...  "]).is_empty());
        let long = "word ".repeat(100);
        let out = chunks(&[&long]);
        assert!(out.len() >= 2);
        assert!(out.iter().all(|(t, _)| t.len() <= MAX_CHUNK_CHARS));
    }
}
