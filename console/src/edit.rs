//! How an edit lands on a route that already exists, the same for `mcproxyctl routes
//! update` and the console's form: a member that stays keeps its admin state, so changing
//! the weights or adding a member never undoes a drain.
//!
//! No I/O, no state.

use mc_proxy_shared::RouteBackend;

/// A new backend set for a route whose set is `current`: a member that stays keeps its
/// admin state (a drain is not undone by editing the weights).
pub fn keep_admin_states(new: Vec<RouteBackend>, current: &[RouteBackend]) -> Vec<RouteBackend> {
    new.into_iter()
        .map(|b| match current.iter().find(|c| c.address == b.address) {
            Some(c) => RouteBackend {
                state: c.state,
                ..b
            },
            None => b,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mc_proxy_shared::AdminState;

    #[test]
    fn a_new_set_keeps_the_admin_state_of_members_that_stay() {
        let drained = RouteBackend {
            state: AdminState::Draining,
            ..RouteBackend::new("a:1")
        };
        let new = keep_admin_states(
            vec![
                RouteBackend::new("a:1").with_weight(4),
                RouteBackend::new("b:1"),
            ],
            &[drained, RouteBackend::new("c:1")],
        );
        assert_eq!(
            new,
            vec![
                RouteBackend {
                    state: AdminState::Draining,
                    ..RouteBackend::new("a:1").with_weight(4)
                },
                RouteBackend::new("b:1"),
            ]
        );
    }
}
