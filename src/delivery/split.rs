//! Long replies cut into messages a channel accepts.
//!
//! A part is at most `max` UTF-16 code units long (what Telegram and Discord count; for
//! channels that count code points it is a little conservative, never over). Each cut is made
//! at the last boundary of the strongest kind found in the second half of the window:
//! a paragraph (a blank line), then a line break, then the end of a sentence, then a space,
//! and only then between two characters (never inside one). Nothing is dropped or reordered:
//! the parts joined give the text back, except that parts holding only whitespace are left
//! out (a channel refuses an empty message) and that past `max_parts` the rest is cut with a
//! visible note saying how much.

/// Splits `text` into parts of at most `max` UTF-16 units, at most `max_parts` of them (the
/// last one then ends with [`cut_note`]). An empty text is one empty part.
pub fn split(text: &str, max: usize, max_parts: usize) -> Vec<String> {
    let max = max.max(1);
    let max_parts = max_parts.max(1);
    let mut parts = Vec::new();
    let mut rest = text;
    while utf16_len(rest) > max {
        let brk = break_at(rest, max);
        push_part(&mut parts, &rest[..brk]);
        rest = &rest[brk..];
    }
    push_part(&mut parts, rest);
    if parts.is_empty() {
        parts.push(text.to_string());
    }
    if parts.len() > max_parts {
        parts.truncate(max_parts);
        // Room for the note (its count has at most 10 digits more than the placeholder).
        let room = max.saturating_sub(utf16_len(&cut_note(0)) + 10).max(1);
        if let Some(last) = parts.last_mut()
            && utf16_len(last) > room
        {
            let brk = break_at(last, room);
            last.truncate(brk);
        }
        let kept: usize = parts.iter().map(|p| p.chars().count()).sum();
        let dropped = text.chars().count().saturating_sub(kept);
        if let Some(last) = parts.last_mut() {
            last.push_str(&cut_note(dropped));
        }
    }
    parts
}

/// The note that ends a reply cut short.
pub fn cut_note(dropped: usize) -> String {
    format!("\n[… {dropped} more characters cut by keel]")
}

pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

fn push_part(parts: &mut Vec<String>, part: &str) {
    if !part.trim().is_empty() {
        parts.push(part.to_string());
    }
}

/// Where to cut `text` (longer than `max` units): a byte offset on a character boundary,
/// after at least one character and at most `max` units in.
fn break_at(text: &str, max: usize) -> usize {
    let mut units = 0;
    let mut cut = text.len();
    for (i, c) in text.char_indices() {
        if units + c.len_utf16() > max {
            // Never an empty part, even for a limit below one character.
            cut = if i == 0 { c.len_utf8() } else { i };
            break;
        }
        units += c.len_utf16();
    }
    let window = &text[..cut];
    let half = cut / 2;
    // The end (exclusive) of the last match of each kind, if it is past the window's middle.
    let last = |find: &dyn Fn(&str) -> Option<usize>| find(window).filter(|&i| i > half);
    last(&|w| w.rfind("\n\n").map(|i| i + 2))
        .or_else(|| last(&|w| w.rfind('\n').map(|i| i + 1)))
        .or_else(|| last(&sentence_end))
        .or_else(|| {
            last(&|w| {
                w.char_indices()
                    .rev()
                    .find(|&(_, c)| c.is_whitespace())
                    .map(|(i, c)| i + c.len_utf8())
            })
        })
        .unwrap_or(cut)
}

/// Just after the last sentence end in `w`: `.`, `!`, `?` or `…` followed by whitespace (the
/// whitespace stays with the sentence), or a CJK full stop, exclamation or question mark.
fn sentence_end(w: &str) -> Option<usize> {
    let mut prev: Option<char> = None;
    let mut found = None;
    for (i, c) in w.char_indices() {
        let cjk_stop = matches!(c, '。' | '！' | '？');
        if cjk_stop || (c.is_whitespace() && matches!(prev, Some('.' | '!' | '?' | '…'))) {
            found = Some(i + c.len_utf8());
        }
        prev = Some(c);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_text_is_one_part() {
        assert_eq!(split("short", 2000, 10), ["short"]);
        assert_eq!(split("", 2000, 10), [""]);
        assert_eq!(split("   ", 2, 10), ["   "]);
    }

    #[test]
    fn cuts_prefer_paragraphs_then_lines_then_sentences_then_spaces() {
        let para = format!("{}\n\n{}", "a".repeat(60), "b".repeat(60));
        assert_eq!(
            split(&para, 100, 10),
            [format!("{}\n\n", "a".repeat(60)), "b".repeat(60)]
        );
        // A line break beats a later sentence end.
        let lines = format!("{}\n{}. {}", "a".repeat(55), "b".repeat(20), "c".repeat(40));
        assert_eq!(split(&lines, 100, 10)[0], format!("{}\n", "a".repeat(55)));
        // A sentence end beats a later space.
        let sentences = format!("{}. {} {}", "a".repeat(55), "b".repeat(20), "c".repeat(40));
        assert_eq!(
            split(&sentences, 100, 10)[0],
            format!("{}. ", "a".repeat(55))
        );
        // A decimal point is not a sentence end.
        let number = format!("{} 3.14{}", "a".repeat(60), "c".repeat(60));
        assert_eq!(split(&number, 100, 10)[0], format!("{} ", "a".repeat(60)));
        let cjk = format!("{}。{}", "字".repeat(60), "字".repeat(60));
        assert_eq!(split(&cjk, 100, 10)[0], format!("{}。", "字".repeat(60)));
        // A break in the first half is ignored: the part would be needlessly short.
        let early = format!("ab\n\n{}", "c".repeat(200));
        assert_eq!(split(&early, 100, 10)[0].len(), 100);
    }

    #[test]
    fn hard_cuts_never_split_a_character() {
        let parts = split(&"é".repeat(4500), 2000, 10);
        assert_eq!(
            parts.iter().map(|p| p.chars().count()).collect::<Vec<_>>(),
            [2000, 2000, 500]
        );
        // Astral characters count two units each.
        let parts = split(&"😀".repeat(1500), 2000, 10);
        assert_eq!(
            parts.iter().map(|p| utf16_len(p)).collect::<Vec<_>>(),
            [2000, 1000]
        );
        assert_eq!(split("😀😀", 1, 10), ["😀", "😀"]);
    }

    #[test]
    fn past_the_last_part_the_rest_is_cut_with_a_note_that_counts_it() {
        let check_cut = |text: &str| {
            let parts = split(text, 2000, 10);
            assert_eq!(parts.len(), 10);
            assert!(parts.iter().all(|p| utf16_len(p) <= 2000));
            let last = &parts[9];
            let at = last.rfind("\n[… ").expect("a note");
            let kept = format!("{}{}", parts[..9].concat(), &last[..at]);
            assert!(text.starts_with(&kept));
            assert!(kept.len() > 19_900, "{}", kept.len());
            assert_eq!(
                last[at..],
                cut_note(text.chars().count() - kept.chars().count())
            );
        };
        check_cut(&"x".repeat(25_000));
        check_cut(&format!("{}\n{}", "y".repeat(19_990), "z".repeat(100)));
    }

    proptest! {
        #[test]
        fn parts_fit_keep_order_and_lose_only_whitespace(
            text in "[a-c .!?\n。é😀]{0,400}",
            max in 1usize..60,
        ) {
            let parts = split(&text, max, usize::MAX);
            for p in &parts {
                prop_assert!(utf16_len(p) <= max.max(2), "{p:?}");
            }
            let joined = parts.concat();
            let squeeze = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
            prop_assert_eq!(squeeze(&joined), squeeze(&text));
            // In order: the parts are consecutive pieces of the text.
            let mut rest = text.as_str();
            for p in &parts {
                let at = rest.find(p.as_str());
                prop_assert!(at.is_some(), "{:?} not in {:?}", p, rest);
                let at = at.unwrap_or(0);
                prop_assert!(rest[..at].trim().is_empty());
                rest = &rest[at + p.len()..];
            }
        }
    }
}
