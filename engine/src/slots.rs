//! A worker's call slots, pure: which are free, reserved for a fleet token until a time, or
//! carrying a call (AI or not), and what a new call or reservation may take. No clock (times
//! come in as Unix milliseconds), no registry; the worker mirrors changes into the shared
//! registry. Every query is O(1) but finding a reservation by token, which scans the table.

/// Why a call or reservation cannot have a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// Every slot is taken (or the worker drains).
    Slots,
    /// The worker carries its limit of AI calls (reservations count: they are for AI calls).
    AiCalls,
}

impl Full {
    /// The error code and message a refused call gets.
    pub(crate) fn refusal(self) -> (&'static str, &'static str) {
        match self {
            Full::Slots => ("busy", "every call slot on this host is taken"),
            Full::AiCalls => ("ai_capacity", "this core carries all the AI calls it may; try another host"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Free,
    Reserved { until_ms: u64, token: u64 },
    Active { ai: bool },
}

/// What [`SlotTable::reserve`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reserved {
    /// A free slot is now held for the token.
    New(usize),
    /// The token already held this slot; its expiry moved.
    Renewed(usize),
}

/// The slots of one worker.
#[derive(Debug)]
pub(crate) struct SlotTable {
    state: Vec<Slot>,
    /// Free slots, the lowest index taken first.
    free: Vec<usize>,
    reserved: usize,
    active: usize,
    ai_active: usize,
    ai_limit: usize,
    draining: bool,
}

impl SlotTable {
    /// `slots` slots, at most `ai_limit` of them carrying (or reserved for) AI calls.
    pub(crate) fn new(slots: usize, ai_limit: usize) -> SlotTable {
        SlotTable {
            state: vec![Slot::Free; slots],
            free: (0..slots).rev().collect(),
            reserved: 0,
            active: 0,
            ai_active: 0,
            ai_limit,
            draining: false,
        }
    }

    /// Takes a slot for a call: the one reserved for `token` if there is one, else a free one
    /// (not while draining; for an AI call, only while there is AI room).
    pub(crate) fn acquire(&mut self, token: Option<u64>, ai: bool) -> Result<usize, Full> {
        let slot = match token.and_then(|t| self.reservation(t)) {
            Some(slot) => {
                self.reserved -= 1;
                slot
            }
            None if self.draining => return Err(Full::Slots),
            None if ai && self.ai_room() == 0 => return Err(Full::AiCalls),
            None => self.free.pop().ok_or(Full::Slots)?,
        };
        self.state[slot] = Slot::Active { ai };
        self.active += 1;
        self.ai_active += usize::from(ai);
        Ok(slot)
    }

    /// Holds a slot for `token` until `until_ms` (a token held twice is one reservation with
    /// the later expiry). `None`: no slot or AI room, or draining.
    pub(crate) fn reserve(&mut self, token: u64, until_ms: u64) -> Option<Reserved> {
        if self.draining {
            return None;
        }
        if let Some(slot) = self.reservation(token) {
            self.state[slot] = Slot::Reserved { until_ms, token };
            return Some(Reserved::Renewed(slot));
        }
        if self.ai_room() == 0 {
            return None;
        }
        let slot = self.free.pop()?;
        self.state[slot] = Slot::Reserved { until_ms, token };
        self.reserved += 1;
        Some(Reserved::New(slot))
    }

    /// The slot reserved for `token`, if any.
    pub(crate) fn reservation(&self, token: u64) -> Option<usize> {
        self.state.iter().position(|s| matches!(s, Slot::Reserved { token: t, .. } if *t == token))
    }

    /// Frees `slot` whatever holds it; `false` if it was free already.
    pub(crate) fn free(&mut self, slot: usize) -> bool {
        match self.state.get(slot).copied() {
            None | Some(Slot::Free) => return false,
            Some(Slot::Reserved { .. }) => self.reserved -= 1,
            Some(Slot::Active { ai }) => {
                self.active -= 1;
                self.ai_active -= usize::from(ai);
            }
        }
        self.state[slot] = Slot::Free;
        self.free.push(slot);
        true
    }

    /// Reservations that ran out by `now_ms`, to be freed.
    pub(crate) fn expired(&self, now_ms: u64) -> impl Iterator<Item = usize> + '_ {
        self.state.iter().enumerate().filter_map(move |(i, s)| matches!(s, Slot::Reserved { until_ms, .. } if *until_ms <= now_ms).then_some(i))
    }

    /// Slots carrying a call.
    pub(crate) fn active_slots(&self) -> impl Iterator<Item = usize> + '_ {
        self.state.iter().enumerate().filter_map(|(i, s)| matches!(s, Slot::Active { .. }).then_some(i))
    }

    /// Slots a new AI call may still take: the limit less AI calls running and reservations.
    pub(crate) fn ai_room(&self) -> usize {
        self.ai_limit.saturating_sub(self.ai_active + self.reserved)
    }

    /// What the worker offers to the acceptor and the fleet: slots a new AI call could take,
    /// none while draining.
    pub(crate) fn capacity(&self) -> usize {
        if self.draining { 0 } else { self.free.len().min(self.ai_room()) }
    }

    /// Calls live on the worker.
    pub(crate) fn live(&self) -> usize {
        self.active
    }

    /// AI calls live on the worker.
    pub(crate) fn ai_calls(&self) -> usize {
        self.ai_active
    }

    pub(crate) fn draining(&self) -> bool {
        self.draining
    }

    /// While draining, nothing new is taken: calls keep their slots, reservations lapse.
    pub(crate) fn set_draining(&mut self, on: bool) {
        self.draining = on;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_take_the_lowest_free_slot_and_give_it_back() {
        let mut t = SlotTable::new(3, 3);
        assert_eq!(t.acquire(None, false), Ok(0));
        assert_eq!(t.acquire(None, true), Ok(1));
        assert_eq!((t.live(), t.ai_calls(), t.capacity()), (2, 1, 1));
        assert!(t.free(0));
        assert!(!t.free(0), "freeing twice changes nothing");
        assert!(!t.free(7), "no such slot");
        assert_eq!(t.acquire(None, false), Ok(0));
        assert_eq!(t.acquire(None, false), Ok(2));
        assert_eq!(t.acquire(None, false), Err(Full::Slots));
        assert_eq!(t.active_slots().collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn ai_calls_and_reservations_share_the_ai_limit_plain_calls_do_not() {
        let mut t = SlotTable::new(4, 2);
        assert_eq!(t.acquire(None, true), Ok(0));
        assert_eq!(t.reserve(0xA, 1_000), Some(Reserved::New(1)));
        assert_eq!(t.ai_room(), 0);
        assert_eq!(t.acquire(None, true), Err(Full::AiCalls));
        assert_eq!(t.reserve(0xB, 1_000), None, "a reservation is for an AI call");
        assert_eq!(t.acquire(None, false), Ok(2), "an echo call still fits");
        assert_eq!(t.capacity(), 0);
        // The reserved call arrives: it takes its slot, room stays at zero.
        assert_eq!(t.acquire(Some(0xA), true), Ok(1));
        assert_eq!((t.ai_calls(), t.ai_room()), (2, 0));
        assert!(t.free(0));
        assert_eq!((t.ai_calls(), t.ai_room(), t.capacity()), (1, 1, 1));
    }

    #[test]
    fn reservations_renew_lapse_and_release() {
        let mut t = SlotTable::new(2, 2);
        assert_eq!(t.reserve(7, 1_000), Some(Reserved::New(0)));
        assert_eq!(t.reserve(7, 5_000), Some(Reserved::Renewed(0)), "the same token is one reservation");
        assert_eq!(t.expired(4_999).count(), 0);
        assert_eq!(t.expired(5_000).collect::<Vec<_>>(), [0]);
        assert_eq!(t.reservation(7), Some(0));
        assert!(t.free(0));
        assert_eq!(t.reservation(7), None);
        assert_eq!(t.ai_room(), 2);
        // A token not held here does not give a call its slot: it takes a free one.
        assert_eq!(t.acquire(Some(9), true), Ok(0));
    }

    #[test]
    fn draining_takes_nothing_new_but_a_reserved_call_still_lands() {
        let mut t = SlotTable::new(3, 3);
        assert_eq!(t.reserve(1, 1_000), Some(Reserved::New(0)));
        t.set_draining(true);
        assert_eq!(t.capacity(), 0);
        assert_eq!(t.acquire(None, false), Err(Full::Slots));
        assert_eq!(t.reserve(2, 1_000), None);
        assert_eq!(t.acquire(Some(1), true), Ok(0), "its slot was held for it");
        t.set_draining(false);
        assert_eq!(t.capacity(), 2);
    }
}
