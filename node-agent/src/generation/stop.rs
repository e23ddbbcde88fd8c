//! Stop strings: generated text is held back while it could be the start of one, and cut
//! where one appears, so a client never sees any part of a stop string.

/// The text of one sequence on its way out, watched for its stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Takes new text: returns what may go out now, and whether a stop string ended the
    /// text (what precedes it is in the returned text; nothing after it is).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            let out = self.held[..at].to_owned();
            self.held.clear();
            return (out, true);
        }
        // Hold back the longest end of the text that begins some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .filter(|&n| s.is_char_boundary(n))
                    .filter(|&n| self.held.ends_with(&s[..n]))
            })
            .max()
            .unwrap_or(0);
        let split = self.held.len() - keep;
        let out = self.held[..split].to_owned();
        self.held.drain(..split);
        (out, false)
    }

    /// What is held back, once the sequence has ended without a stop string.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_held_while_it_may_start_a_stop_string_and_cut_at_it() {
        let mut m = StopMatcher::new(&["\n\nUser:".into(), "END".into()]);
        assert_eq!(m.push("Hello"), ("Hello".into(), false));
        assert_eq!(m.push(" world\n"), (" world".into(), false));
        assert_eq!(m.push("\nUs"), (String::new(), false));
        assert_eq!(m.push("e"), (String::new(), false));
        assert_eq!(m.push("r: hi"), (String::new(), true));

        let mut m = StopMatcher::new(&["END".into()]);
        assert_eq!(m.push("the EN"), ("the ".into(), false));
        assert_eq!(m.push("TRY"), ("ENTRY".into(), false));
        assert_eq!(m.push("E"), (String::new(), false));
        assert_eq!(m.flush(), "E");
        assert_eq!(m.push("xxENDyy"), ("xx".into(), true));
    }

    #[test]
    fn no_stop_strings_hold_nothing_and_multibyte_text_is_cut_on_characters() {
        let mut m = StopMatcher::new(&[]);
        assert_eq!(m.push("é"), ("é".into(), false));
        let mut m = StopMatcher::new(&["éé".into()]);
        assert_eq!(m.push("aé"), ("a".into(), false));
        assert_eq!(m.push("é!"), (String::new(), true));
    }
}
