//! Connection timers: a min-heap of `(deadline, slot, generation)` entries, invalidated
//! lazily, so that an iteration visits only the connections whose deadline has come.
//!
//! Each connection reports its next deadline (`HttpConn::next_deadline`,
//! `WsConn::next_deadline`) after every handler call, and its [`Timer`] remembers the one
//! entry of the heap it honours: its earliest. Nothing is ever removed from the middle of the
//! heap. An entry is stale — dropped when it comes out — if its slot is empty, holds
//! another generation, or has since armed an earlier deadline. A deadline that moved *later*
//! pushes nothing: the earlier entry comes due, the connection is asked again, and its timer
//! is armed anew at the later deadline. So a keep-alive connection that pushes its idle
//! deadline back with every request adds nothing to the heap, and entries per connection are
//! bounded by how many times its deadline moved earlier before the armed one came due.
//! Entries of closed connections stay until they come due or the heap is compacted
//! ([`Timers::retain`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// One heap entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// First, so that entries order by deadline.
    pub at: Instant,
    pub slot: usize,
    pub generation: u64,
}

/// A connection's side of its timer: the deadline of the heap entry it honours, if any.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    armed: Option<Instant>,
}

impl Timer {
    /// The deadline this connection's entry is waiting for.
    pub fn armed(self) -> Option<Instant> {
        self.armed
    }

    /// Whether an entry that came due at `at` is this connection's current one; if so the
    /// timer is disarmed (the caller asks the connection for its next deadline).
    pub fn fire(&mut self, at: Instant) -> bool {
        if self.armed == Some(at) {
            self.armed = None;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<Entry>>,
}

impl Timers {
    /// The connection in `slot` (of `generation`) next has something to do at `want`. An entry
    /// is pushed only if that is earlier than the one the connection has armed (see the module
    /// doc); `None` leaves an armed entry to come due and find nothing to do.
    pub fn arm(&mut self, timer: &mut Timer, want: Option<Instant>, slot: usize, generation: u64) {
        let Some(at) = want else {
            return;
        };
        if timer.armed.is_some_and(|armed| armed <= at) {
            return;
        }
        timer.armed = Some(at);
        self.heap.push(Reverse(Entry {
            at,
            slot,
            generation,
        }));
    }

    /// Re-arms at `at` whatever is armed (earlier or later): for a deadline the connection's
    /// timer handler left due, which must not come due again at once.
    pub fn rearm(&mut self, timer: &mut Timer, at: Instant, slot: usize, generation: u64) {
        timer.armed = None;
        self.arm(timer, Some(at), slot, generation);
    }

    /// The earliest deadline in the heap (perhaps a stale one: waking for it costs one
    /// iteration that finds nothing).
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    /// Takes the earliest entry if it is due at `now`. The caller checks that it is current
    /// ([`Timer::fire`], and the slot's generation).
    pub fn pop_due(&mut self, now: Instant) -> Option<Entry> {
        match self.heap.peek() {
            Some(Reverse(e)) if e.at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Keeps the entries `current` says are still honoured: drops stale ones all at once (the
    /// reactor does when they outnumber its connections).
    pub fn retain(&mut self, mut current: impl FnMut(&Entry) -> bool) {
        self.heap.retain(|Reverse(e)| current(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    /// Pops every entry due at `now` that is current for `timers` (one per slot, generation
    /// 1 here), as the reactor does; returns the slots that fired.
    fn due(heap: &mut Timers, timers: &mut [Timer], now: Instant) -> Vec<usize> {
        let mut fired = Vec::new();
        while let Some(e) = heap.pop_due(now) {
            if timers[e.slot].fire(e.at) {
                fired.push(e.slot);
            }
        }
        fired
    }

    #[test]
    fn only_due_connections_fire_in_deadline_order() {
        let t0 = Instant::now();
        let mut heap = Timers::default();
        let mut t = [Timer::default(); 3];
        heap.arm(&mut t[0], Some(ms(t0, 30)), 0, 1);
        heap.arm(&mut t[1], Some(ms(t0, 10)), 1, 1);
        heap.arm(&mut t[2], None, 2, 1);
        assert_eq!(heap.next(), Some(ms(t0, 10)));
        assert_eq!(due(&mut heap, &mut t, ms(t0, 5)), Vec::<usize>::new());
        assert_eq!(due(&mut heap, &mut t, ms(t0, 10)), [1]);
        assert_eq!(t[1].armed(), None, "a fired timer is disarmed");
        assert_eq!(heap.next(), Some(ms(t0, 30)));
        assert_eq!(due(&mut heap, &mut t, ms(t0, 100)), [0]);
        assert!(heap.is_empty());
    }

    #[test]
    fn a_later_deadline_pushes_nothing_and_an_earlier_one_supersedes() {
        let t0 = Instant::now();
        let mut heap = Timers::default();
        let mut t = [Timer::default()];
        heap.arm(&mut t[0], Some(ms(t0, 50)), 0, 1);
        // A keep-alive connection pushing its idle deadline back: no new entry.
        for n in 51..100 {
            heap.arm(&mut t[0], Some(ms(t0, n)), 0, 1);
        }
        assert_eq!(heap.len(), 1);
        assert_eq!(t[0].armed(), Some(ms(t0, 50)));
        // An earlier one (a head timeout shorter than the idle one): a second entry, and
        // only it is honoured.
        heap.arm(&mut t[0], Some(ms(t0, 20)), 0, 1);
        assert_eq!(heap.len(), 2);
        assert_eq!(due(&mut heap, &mut t, ms(t0, 20)), [0]);
        // The superseded entry comes due and is dropped as stale.
        assert_eq!(due(&mut heap, &mut t, ms(t0, 60)), Vec::<usize>::new());
        assert!(heap.is_empty());
    }

    #[test]
    fn rearm_moves_a_due_deadline_later_and_retain_compacts() {
        let t0 = Instant::now();
        let mut heap = Timers::default();
        let mut t = [Timer::default(), Timer::default()];
        heap.arm(&mut t[0], Some(ms(t0, 10)), 0, 1);
        heap.rearm(&mut t[0], ms(t0, 35), 0, 1);
        assert_eq!(due(&mut heap, &mut t, ms(t0, 10)), Vec::<usize>::new());
        assert_eq!(due(&mut heap, &mut t, ms(t0, 35)), [0]);
        // Entries of a closed connection (slot 1 gone) go at compaction.
        heap.arm(&mut t[1], Some(ms(t0, 40)), 1, 1);
        heap.arm(&mut t[0], Some(ms(t0, 45)), 0, 1);
        heap.retain(|e| e.slot != 1);
        assert_eq!(heap.len(), 1);
        assert_eq!(heap.next(), Some(ms(t0, 45)));
    }
}
