//! Load-balancer strategies for AI assistants: round robin, least connections, random, and
//! weighted (smooth weighted round robin, so the shares hold over any run of calls, not just on
//! average). Failover: when the member a strategy picks is down, it is remembered as tried and
//! the strategy picks again among the members not yet tried for that call.

/// One member as the balancer sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    pub weight: u32,
    /// Live calls routed to it.
    pub live: u64,
    pub down: bool,
}

/// How a balancer spreads calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    RoundRobin,
    LeastConnections,
    Random,
    Weighted,
}

/// What a balancer remembers between calls (kept per balancer by the dialler process).
#[derive(Debug, Clone, Default)]
pub struct State {
    next: usize,
    current: Vec<i64>,
}

/// The member picked for a call and every member tried on the way (the picked one last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub picked: Option<usize>,
    pub tried: Vec<usize>,
}

/// Picks a member for one call. `random` supplies uniform numbers for [`Strategy::Random`].
pub fn choose(strategy: Strategy, members: &[Member], state: &mut State, mut random: impl FnMut(usize) -> usize) -> Choice {
    state.current.resize(members.len(), 0);
    let mut tried = Vec::new();
    loop {
        let candidates: Vec<usize> = (0..members.len()).filter(|i| !tried.contains(i)).collect();
        if candidates.is_empty() {
            return Choice { picked: None, tried };
        }
        let i = match strategy {
            Strategy::RoundRobin => {
                let n = members.len();
                let i = candidates.iter().copied().min_by_key(|&i| (i + n - state.next % n) % n).unwrap_or(0);
                state.next = (i + 1) % n;
                i
            }
            Strategy::LeastConnections => candidates.iter().copied().min_by_key(|&i| (members[i].live, i)).unwrap_or(0),
            Strategy::Random => candidates[random(candidates.len()).min(candidates.len() - 1)],
            Strategy::Weighted => {
                let total: i64 = candidates.iter().map(|&i| i64::from(members[i].weight)).sum();
                for &i in &candidates {
                    state.current[i] += i64::from(members[i].weight);
                }
                let i = candidates.iter().copied().max_by_key(|&i| (state.current[i], std::cmp::Reverse(i))).unwrap_or(0);
                state.current[i] -= total;
                i
            }
        };
        tried.push(i);
        if !members[i].down {
            return Choice { picked: Some(i), tried };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(weight: u32, live: u64) -> Member {
        Member { weight, live, down: false }
    }

    fn picks(strategy: Strategy, members: &[Member], n: usize) -> Vec<usize> {
        let mut state = State::default();
        let mut seed = 7usize;
        (0..n)
            .map(|_| {
                choose(strategy, members, &mut state, |len| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 33) % len
                })
                .picked
                .expect("a member")
            })
            .collect()
    }

    #[test]
    fn round_robin_cycles_in_order() {
        assert_eq!(picks(Strategy::RoundRobin, &[up(1, 0), up(1, 0), up(1, 0)], 7), vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn least_connections_takes_the_idlest() {
        assert_eq!(picks(Strategy::LeastConnections, &[up(1, 5), up(1, 2), up(1, 9)], 2), vec![1, 1]);
    }

    #[test]
    fn weighted_shares_hold_over_every_run() {
        let got = picks(Strategy::Weighted, &[up(5, 0), up(1, 0), up(1, 0)], 7);
        assert_eq!(got.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(got.iter().filter(|&&i| i == 1).count(), 1);
        // Smooth: the heavy member's picks are spread, never five in a row.
        assert!(got.windows(5).all(|w| w.iter().any(|&i| i != 0)), "{got:?}");
        let many = picks(Strategy::Weighted, &[up(70, 0), up(30, 0)], 1000);
        assert_eq!(many.iter().filter(|&&i| i == 0).count(), 700);
    }

    #[test]
    fn random_reaches_every_member() {
        let got = picks(Strategy::Random, &[up(1, 0), up(1, 0), up(1, 0), up(1, 0)], 400);
        for m in 0..4 {
            let n = got.iter().filter(|&&i| i == m).count();
            assert!((50..=150).contains(&n), "member {m} picked {n} times of 400");
        }
    }

    #[test]
    fn a_down_member_fails_over_to_the_next_and_is_remembered() {
        let members = [up(1, 0), Member { weight: 1, live: 0, down: true }, up(1, 0)];
        let mut state = State::default();
        let first = choose(Strategy::RoundRobin, &members, &mut state, |_| 0);
        assert_eq!(first, Choice { picked: Some(0), tried: vec![0] });
        let second = choose(Strategy::RoundRobin, &members, &mut state, |_| 0);
        assert_eq!(second, Choice { picked: Some(2), tried: vec![1, 2] });
        for strategy in [Strategy::LeastConnections, Strategy::Weighted, Strategy::Random] {
            let all_down = [Member { weight: 1, live: 0, down: true }; 3];
            let c = choose(strategy, &all_down, &mut State::default(), |len| len - 1);
            assert_eq!(c.picked, None);
            let mut tried = c.tried.clone();
            tried.sort_unstable();
            assert_eq!(tried, vec![0, 1, 2], "{strategy:?} tries each member once");
        }
        assert_eq!(choose(Strategy::Weighted, &[], &mut State::default(), |_| 0), Choice { picked: None, tried: vec![] });
    }
}
