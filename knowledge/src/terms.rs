//! The words BM25 ranks by: lowercase runs of letters and digits, with what follows an
//! apostrophe dropped (`what's` → `what`, `don't` → `don`), stop words out (function words and
//! the everyday verbs of spoken questions: a caller's "I need to come up" matches nothing by
//! those words), plurals reduced (`policies` → `policy`, `refunds` → `refund`).

const STOPWORDS: &[&str] = &[
    "a", "about", "after", "again", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "been", "before", "being", "but", "by", "can",
    "come", "could", "did", "do", "does", "doing", "don", "done", "each", "even", "for", "from", "get", "gets", "getting", "go", "goes", "going",
    "got", "had", "has", "have", "having", "he", "her", "here", "hey", "hi", "him", "his", "how", "i", "if", "in", "into", "is", "isn", "it",
    "its", "just", "know", "let", "like", "make", "me", "might", "more", "most", "much", "must", "my", "need", "no", "not", "now", "of", "off",
    "ok", "okay", "on", "one", "only", "or", "other", "our", "out", "over", "please", "really", "say", "see", "she", "should", "so", "some",
    "still", "such", "take", "tell", "than", "thanks", "that", "the", "their", "them", "then", "there", "these", "they", "thing", "this",
    "those", "through", "to", "too", "uh", "um", "up", "us", "very", "want", "was", "way", "we", "well", "were", "what", "when", "where",
    "whether", "which", "while", "who", "why", "will", "with", "wonder", "wondering", "would", "yes", "you", "your",
];

/// Whether `word` (lowercase) is a stop word.
pub fn is_stopword(word: &str) -> bool {
    STOPWORDS.binary_search(&word).is_ok()
}

/// The terms of `text`, in order.
pub fn terms(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for word in text.split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '\u{2019}')) {
        let word = word.split(['\'', '\u{2019}']).next().unwrap_or_default();
        if word.is_empty() {
            continue;
        }
        let mut w = word.to_lowercase();
        if STOPWORDS.binary_search(&w.as_str()).is_ok() {
            continue;
        }
        if w.len() > 4 && w.ends_with("ies") {
            w.truncate(w.len() - 3);
            w.push('y');
        } else if w.len() > 3 && w.ends_with('s') && !w.ends_with("ss") {
            w.pop();
        }
        out.push(w);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_words_are_sorted_for_the_binary_search() {
        assert!(STOPWORDS.windows(2).all(|w| w[0] < w[1]), "{:?}", STOPWORDS.windows(2).find(|w| w[0] >= w[1]));
    }

    #[test]
    fn contractions_everyday_verbs_and_plurals() {
        assert_eq!(terms("What's the check-out time? I need to come up early."), ["check", "time", "early"]);
        assert_eq!(terms("Policies on refunds, and access"), ["policy", "refund", "access"]);
        assert_eq!(terms("I’m wondering if pets are OK"), ["pet"]);
        assert!(terms("").is_empty() && terms("'''").is_empty());
    }
}
