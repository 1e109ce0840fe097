//! Load balancing by goodbye: every `--balance-interval`, shard 0 counts
//! this node's clients and, from the other nodes' tables of clients per
//! application (`Frame::Apps`), the others'; when this node holds more
//! than `--balance-above` times its share, up to `--balance-max` of its
//! clients, spread over its shards in proportion, get goodbye (op 7,
//! reason `load balancing`) and are closed, to reconnect elsewhere. See
//! `crate::cluster::balance` for the decision.

use std::rc::Rc;

use crate::cluster::MemberState;
use crate::cluster::balance::{Balancer, split};
use crate::protocol::errors;
use crate::shard::{Reply, Shard, ShardMsg};

/// On shard 0 of a cluster node with `--balance-above` set.
pub async fn run(shard: Rc<Shard>) {
    let Some(above) = shard.config.balance_above else {
        return;
    };
    let max = shard.config.balance_max as u64;
    let mut balancer = Balancer::default();
    loop {
        glommio::timer::sleep(shard.config.balance_interval).await;
        let view = shard.cluster.view();
        if view.this.is_none() {
            continue;
        }
        // Only alive nodes whose table has come share the load: a suspect
        // one may be dying, and one not heard from cannot be weighed.
        let tables = shard.cluster.remote_apps();
        let others: Vec<u64> = view
            .members
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .filter_map(|m| tables.get(&(m.id.addr, m.id.boot)))
            .map(|apps| apps.values().sum())
            .collect();
        let held: Vec<u64> = shard
            .scatter(|reply_to| ShardMsg::AppCounts { reply_to })
            .await
            .into_iter()
            .map(|reply| match reply {
                Reply::AppCounts(apps) => apps.iter().map(|(_, n)| *n as u64).sum(),
                _ => 0,
            })
            .collect();
        let mine: u64 = held.iter().sum();
        let n = balancer.round(mine, &others, above, max);
        if n == 0 {
            continue;
        }
        tracing::info!(
            clients = mine,
            others = ?others,
            sending = n,
            "load balancing: sending clients away"
        );
        for (to, count) in split(n, &held).into_iter().enumerate() {
            match count {
                0 => {}
                _ if to == shard.id => send_away(&shard, count),
                _ => shard.on_shard(to, ShardMsg::SendAway { count }),
            }
        }
    }
}

/// On each shard asked ([`ShardMsg::SendAway`]): goodbye to `count` of its
/// clients. Their names are given back at once, here and at their homes,
/// so that a client reconnecting to another node right away is not
/// refused as a duplicate of its closing connection.
pub fn send_away(shard: &Shard, count: u64) {
    let gone = shard.send_away(count as usize, errors::LOAD_BALANCING);
    shard.metrics.balance_goodbyes(gone.len() as u64);
    for (app, client, owner) in gone {
        shard.release_name(&app, &client, owner);
        super::claims::release(shard, &app, &client, owner);
    }
}
