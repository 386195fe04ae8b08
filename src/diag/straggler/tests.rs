use super::*;

#[test]
fn the_straggler_is_reported_when_last_in_most_of_64_and_once_per_change() {
    let mut s = Stragglers::new();
    let mut reports = Vec::new();
    let mut feed = |rank: i32, times: usize| -> Vec<(i32, usize)> {
        reports.extend((0..times).filter_map(|_| s.push(rank)));
        reports.clone()
    };
    // 32 of 64 is not most: nothing yet.
    feed(3, 32);
    assert_eq!(feed(1, 32), []);
    // The 33rd exchange of rank 3 in the window (its first 32 rolled out: rank 1 has 32).
    assert_eq!(feed(3, 32), []);
    assert_eq!(feed(3, 1), [(3, 33)]);
    // Still rank 3: not again.
    assert_eq!(feed(3, 200).len(), 1);
    // A change to rank 0, then back to rank 3: each once.
    assert_eq!(feed(0, 33)[1..], [(0, 33)]);
    feed(0, 100);
    assert_eq!(feed(3, 33)[2..], [(3, 33)]);
    // No majority (alternating ranks) reports nothing.
    let mut t = Stragglers::new();
    let mut none = 0;
    for i in 0..500 {
        none += usize::from(t.push(i % 2).is_some());
    }
    assert_eq!(none, 0);
}
