//! Documents into passages that follow their structure. Markdown headings (`#` to `######`)
//! open sections and a passage never spans two; within a section, paragraphs and list items
//! are packed into passages of at most [`MAX_CHARS`] characters, closed at a paragraph break
//! once they hold [`MIN_CHARS`], else at the sentence that would not fit. A passage cut inside
//! a section starts with the last sentence of the one before (when it is short), so a fact
//! split across the cut is whole in one of them. A sentence longer than a passage is cut
//! between words, a word between characters.

/// A passage's most characters (overlap included).
pub const MAX_CHARS: usize = 700;
/// At a paragraph break, a passage this long is closed rather than filled further.
pub const MIN_CHARS: usize = 250;
/// The longest sentence carried into the next passage as overlap.
pub const OVERLAP_CHARS: usize = 200;

/// One passage of a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The passage, whitespace collapsed, paragraphs apart by a blank line.
    pub text: String,
    /// The headings it sits under, outermost first (empty before the first heading).
    pub heading: Vec<String>,
    /// Its place in the document, from 0.
    pub position: usize,
}

impl Chunk {
    /// What an embedding model reads: the heading path, then the passage.
    pub fn for_embedding(&self) -> String {
        if self.heading.is_empty() {
            self.text.clone()
        } else {
            format!("{}: {}", self.heading.join(" > "), self.text)
        }
    }
}

/// A run of text inside one section.
enum Block {
    Heading(usize, String),
    Paragraph(String),
}

/// The headings and paragraphs of `text` (list items are paragraphs of their own).
fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut words: Vec<&str> = Vec::new();
    let flush = |words: &mut Vec<&str>, out: &mut Vec<Block>| {
        if !words.is_empty() {
            out.push(Block::Paragraph(words.join(" ")));
            words.clear();
        }
    };
    for line in text.lines() {
        let trimmed = line.trim();
        let hashes = trimmed.bytes().take_while(|&b| b == b'#').count();
        if (1..=6).contains(&hashes) && trimmed[hashes..].starts_with(' ') {
            flush(&mut words, &mut out);
            let title = trimmed[hashes..].split_whitespace().collect::<Vec<_>>().join(" ");
            if !title.is_empty() {
                out.push(Block::Heading(hashes, title));
            }
        } else if trimmed.is_empty() {
            flush(&mut words, &mut out);
        } else {
            let item = trimmed.starts_with("- ") || trimmed.starts_with("* ") || trimmed.split_once(". ").is_some_and(|(n, _)| !n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit()));
            if item {
                flush(&mut words, &mut out);
            }
            let body = trimmed.strip_prefix("- ").or_else(|| trimmed.strip_prefix("* ")).unwrap_or(trimmed);
            words.extend(body.split_whitespace());
        }
    }
    flush(&mut words, &mut out);
    out
}

/// Builds passages of one section.
struct Packer {
    chunks: Vec<Chunk>,
    heading: Vec<String>,
    current: String,
    chars: usize,
    last_sentence: Option<String>,
}

impl Packer {
    /// Closes the passage; `overlap` carries its last sentence into the next.
    fn close(&mut self, overlap: bool) {
        if self.current.is_empty() {
            return;
        }
        let text = std::mem::take(&mut self.current);
        self.chars = 0;
        let position = self.chunks.len();
        self.chunks.push(Chunk { text, heading: self.heading.clone(), position });
        if overlap && let Some(last) = self.last_sentence.take().filter(|s| s.chars().count() <= OVERLAP_CHARS) {
            self.chars = last.chars().count();
            self.current = last;
        }
        self.last_sentence = None;
    }

    fn push(&mut self, piece: &str, separator: &str) {
        let n = piece.chars().count();
        if self.chars > 0 && self.chars + separator.len() + n > MAX_CHARS {
            self.close(true);
            if self.chars > 0 && self.chars + separator.len() + n > MAX_CHARS {
                // The overlap leaves no room: drop it.
                self.current.clear();
                self.chars = 0;
            }
        }
        if self.chars > 0 {
            self.current.push_str(separator);
            self.chars += separator.len();
        }
        self.current.push_str(piece);
        self.chars += n;
        self.last_sentence = Some(piece.to_string());
    }
}

/// The passages of `text` (Markdown or plain text).
pub fn chunk(text: &str) -> Vec<Chunk> {
    let mut p = Packer { chunks: Vec::new(), heading: Vec::new(), current: String::new(), chars: 0, last_sentence: None };
    for block in blocks(text) {
        match block {
            Block::Heading(level, title) => {
                p.close(false);
                p.heading.truncate(level - 1);
                p.heading.push(title);
            }
            Block::Paragraph(paragraph) => {
                if p.chars >= MIN_CHARS {
                    p.close(false);
                }
                let mut separator = "\n\n";
                for sentence in sentences(&paragraph) {
                    for piece in pieces(sentence, MAX_CHARS) {
                        p.push(piece, separator);
                        separator = " ";
                    }
                }
            }
        }
    }
    p.close(false);
    p.chunks
}

/// Sentences of a paragraph: each ends after `.`, `!` or `?` followed by a space.
fn sentences(paragraph: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut prev_end = false;
    for (i, c) in paragraph.char_indices() {
        if c == ' ' && prev_end {
            out.push(&paragraph[start..i]);
            start = i + 1;
        }
        prev_end = matches!(c, '.' | '!' | '?');
    }
    out.push(&paragraph[start..]);
    out.retain(|s| !s.is_empty());
    out
}

/// `s` cut into pieces of at most `max` characters, between words where it can.
fn pieces(s: &str, max: usize) -> Vec<&str> {
    if s.chars().count() <= max {
        return vec![s];
    }
    let mut out = Vec::new();
    let mut start = 0;
    let mut chars = 0;
    let mut last_space = None;
    for (i, c) in s.char_indices() {
        if chars == max {
            let cut = last_space.filter(|&sp| sp > start).unwrap_or(i);
            out.push(s[start..cut].trim());
            start = if s[cut..].starts_with(' ') { cut + 1 } else { cut };
            chars = s[start..i].chars().count();
            last_space = None;
        }
        if c == ' ' {
            last_space = Some(i);
        }
        chars += 1;
    }
    out.push(s[start..].trim());
    out.retain(|p| !p.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_never_mix_and_passages_carry_their_heading_path() {
        let doc = "# Hotel\n\nWelcome.\n\n## Pets\n\nCompanion animals are welcome.\n\n### Fees\n\n- A fee of 20 applies.\n- Service animals stay free.\n\n## Parking\n\nThe garage is open all night.";
        let chunks = chunk(doc);
        let view: Vec<(Vec<&str>, &str)> = chunks.iter().map(|c| (c.heading.iter().map(String::as_str).collect(), c.text.as_str())).collect();
        assert_eq!(
            view,
            [
                (vec!["Hotel"], "Welcome."),
                (vec!["Hotel", "Pets"], "Companion animals are welcome."),
                (vec!["Hotel", "Pets", "Fees"], "A fee of 20 applies.\n\nService animals stay free."),
                (vec!["Hotel", "Parking"], "The garage is open all night."),
            ]
        );
        assert_eq!(chunks.iter().map(|c| c.position).collect::<Vec<_>>(), [0, 1, 2, 3]);
        assert_eq!(chunks[2].for_embedding(), "Hotel > Pets > Fees: A fee of 20 applies.\n\nService animals stay free.");
        assert!(!doc.contains("##Pets") && chunk("#not a heading\n\ntext").len() == 1);
    }

    #[test]
    fn a_long_section_is_cut_at_sentences_with_a_sentence_of_overlap() {
        let sentence = "Refunds are issued within fourteen days of a return being received.";
        let paragraph = vec![sentence; 30].join(" ");
        let chunks = chunk(&paragraph);
        assert!(chunks.len() >= 3, "{}", chunks.len());
        for (i, c) in chunks.iter().enumerate() {
            assert!(c.text.chars().count() <= MAX_CHARS, "{}", c.text.len());
            assert!(c.text.starts_with("Refunds") && c.text.ends_with('.'), "cut at sentences: {}", c.text);
            if i > 0 {
                assert!(c.text.starts_with(sentence), "overlap");
            }
        }
        // Every sentence is in some passage; overlap repeats one per cut.
        let total: usize = chunks.iter().map(|c| c.text.matches(sentence).count()).sum();
        assert_eq!(total, 30 + chunks.len() - 1);
    }

    #[test]
    fn overlong_sentences_and_words_are_cut_and_arbitrary_text_never_panics() {
        let long = "word ".repeat(400);
        assert!(chunk(&long).iter().all(|c| c.text.chars().count() <= MAX_CHARS));
        let word = "x".repeat(2_000);
        assert_eq!(chunk(&word).len(), 3);
        for text in ["", "\n\n\n", "# ", "######## deep", "é. ü! ß? ", "1. 2. 3.", "- \n- ", "#\u{0}\u{1}"] {
            let _ = chunk(text);
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet: Vec<char> = "ab .!?#-*1\n\r\t é日\u{0}x".chars().collect();
        for _ in 0..300 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 2000) as usize;
            let text: String = (0..len).map(|i| alphabet[((seed >> (i % 50)) as usize + i * 7) % alphabet.len()]).collect();
            for c in chunk(&text) {
                assert!(!c.text.is_empty() && c.text.chars().count() <= MAX_CHARS);
            }
        }
    }
}
