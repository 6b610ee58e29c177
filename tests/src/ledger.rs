//! What the chat-like runs ([`crate::chaos`], [`crate::soak`]) share: the text of a
//! numbered message, `I>J:K:SEQ` (host I's K-th session to host J, its SEQ-th send), and
//! the check of one session's arrivals against the sends its sender was told succeeded.

use std::collections::HashSet;

/// A splitmix64 step: the runs' reproducible randomness.
pub fn splitmix(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `I>J:K:SEQ` parsed: (from, to, session, seq).
pub fn parse_text(text: &str) -> Option<(usize, usize, u64, u64)> {
    let (from, rest) = text.split_once('>')?;
    let mut parts = rest.split(':');
    let to = parts.next()?.parse().ok()?;
    let k = parts.next()?.parse().ok()?;
    let seq = parts.next()?.parse().ok()?;
    Some((from.parse().ok()?, to, k, seq))
}

/// One session, its arrivals against its accepted sends.
#[derive(Debug, Default)]
pub struct SessionCheck {
    /// Accepted sends that arrived.
    pub delivered: u64,
    /// Accepted sends that did not arrive, in send order.
    pub missing: Vec<u64>,
    /// Broken promises: duplicates, reordering, arrivals never accepted, gaps.
    pub problems: Vec<String>,
}

/// Checks what arrived on session `label` (`got`, in arrival order) against what its
/// sender was told was accepted (`ok`, in send order): each arrival exactly once, in order,
/// accepted; anything missing only after the last arrival (a lost tail, which the caller
/// must find announced to the sender).
pub fn check_session(label: &str, ok: &[u64], got: &[u64]) -> SessionCheck {
    let mut c = SessionCheck::default();
    if let Some(w) = got.windows(2).find(|w| w[0] >= w[1]) {
        c.problems
            .push(format!("{label}: duplicated or out of order: {w:?}"));
    }
    let accepted: HashSet<u64> = ok.iter().copied().collect();
    if let Some(x) = got.iter().find(|x| !accepted.contains(x)) {
        c.problems.push(format!(
            "{label}: message {x} arrived but its send was not accepted"
        ));
    }
    let have: HashSet<u64> = got.iter().copied().collect();
    c.missing = ok.iter().copied().filter(|x| !have.contains(x)).collect();
    c.delivered = (ok.len() - c.missing.len()) as u64;
    let last = got.last().copied().unwrap_or(0);
    if c.missing.iter().any(|x| *x < last) {
        c.problems.push(format!(
            "{label}: a gap — messages {:?} lost before {last}",
            c.missing
                .iter()
                .filter(|x| **x < last)
                .take(5)
                .collect::<Vec<_>>()
        ));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_tail_is_missing_a_gap_or_a_reorder_is_a_problem() {
        let tail = check_session("s", &[1, 2, 3, 4], &[1, 2]);
        assert_eq!(
            (tail.delivered, tail.missing, tail.problems.len()),
            (2, vec![3, 4], 0)
        );
        assert_eq!(check_session("s", &[1, 2, 3], &[1, 3]).problems.len(), 1);
        assert_eq!(check_session("s", &[1, 2, 3], &[2, 1, 3]).problems.len(), 1);
        assert_eq!(check_session("s", &[1, 2], &[1, 1, 2]).problems.len(), 1);
        assert_eq!(check_session("s", &[1], &[1, 9]).problems.len(), 1);
        assert_eq!(parse_text("2>0:7:41"), Some((2, 0, 7, 41)));
        assert_eq!(parse_text("2>0:7"), None);
    }
}
