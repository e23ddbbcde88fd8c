//! Where to cut: the nodes in topological order, each weighed by the parameters it
//! brings, and the stage boundaries that balance those weights.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::ShardError;
use crate::proto::{GraphProto, NodeProto};
use crate::tensor::tensor_bytes;

/// How a node is named in messages: its name, or its op and position when unnamed.
pub(super) fn node_label(node: &NodeProto, index: usize) -> String {
    if node.name().is_empty() {
        format!("{}#{index}", node.op_type())
    } else {
        node.name().to_owned()
    }
}

/// Refuses nodes holding subgraphs: their bodies may read any tensor of the enclosing
/// graph, so a cut could not tell what crosses it.
pub(super) fn check_no_subgraphs(graph: &GraphProto) -> Result<(), ShardError> {
    for (i, node) in graph.node.iter().enumerate() {
        let Some(attr) = node
            .attribute
            .iter()
            .find(|a| a.g.is_some() || !a.graphs.is_empty())
        else {
            continue;
        };
        let node_name = node_label(node, i);
        let op = node.op_type().to_owned();
        return Err(if matches!(op.as_str(), "If" | "Loop" | "Scan") {
            ShardError::ControlFlow {
                node: node_name,
                op,
            }
        } else {
            ShardError::Subgraph {
                node: node_name,
                op,
                attribute: attr.name().to_owned(),
            }
        });
    }
    Ok(())
}

/// The graph's nodes in a topological order that keeps the file's order wherever it
/// is already valid (exporters write nodes sorted; a sorted graph stays as it is).
pub(super) fn topological_order(graph: &GraphProto) -> Result<Vec<usize>, ShardError> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, node) in graph.node.iter().enumerate() {
        for out in node.output.iter().filter(|o| !o.is_empty()) {
            if producer.insert(out.as_str(), i).is_some() {
                return Err(ShardError::Invalid(format!(
                    "tensor '{out}' is produced by more than one node"
                )));
            }
        }
    }
    let available: HashSet<&str> = graph
        .input
        .iter()
        .map(|v| v.name())
        .chain(graph.initializer.iter().map(|t| t.name()))
        .chain(
            graph
                .sparse_initializer
                .iter()
                .filter_map(|s| s.values.as_ref().map(|v| v.name())),
        )
        .collect();
    let mut waiting = vec![0usize; graph.node.len()];
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); graph.node.len()];
    for (i, node) in graph.node.iter().enumerate() {
        let mut deps = BTreeSet::new();
        for input in node.input.iter().filter(|n| !n.is_empty()) {
            match producer.get(input.as_str()) {
                Some(&p) => {
                    deps.insert(p);
                }
                None if available.contains(input.as_str()) => {}
                None => {
                    return Err(ShardError::Invalid(format!(
                        "tensor '{input}' read by node '{}' is not a graph input, an \
                         initializer or any node's output",
                        node_label(node, i)
                    )));
                }
            }
        }
        waiting[i] = deps.len();
        for p in deps {
            consumers[p].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..graph.node.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(graph.node.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &c in &consumers[i] {
            waiting[c] -= 1;
            if waiting[c] == 0 {
                ready.insert(c);
            }
        }
    }
    if order.len() < graph.node.len() {
        let stuck = (0..graph.node.len()).find(|&i| waiting[i] > 0).unwrap_or(0);
        let label = graph
            .node
            .get(stuck)
            .map_or_else(String::new, |n| node_label(n, stuck));
        return Err(ShardError::Invalid(format!(
            "the graph has a cycle through node '{label}'"
        )));
    }
    Ok(order)
}

/// Parameter bytes each node brings, by position in `order`: an initializer counts
/// once, at its first reader, so the weights add up to the model's parameters.
pub(super) fn node_weights(graph: &GraphProto, order: &[usize]) -> Vec<u64> {
    let sizes: HashMap<&str, u64> = graph
        .initializer
        .iter()
        .map(|t| (t.name(), tensor_bytes(t)))
        .collect();
    let mut seen: HashSet<&str> = HashSet::new();
    order
        .iter()
        .map(|&i| {
            graph.node[i]
                .input
                .iter()
                .filter_map(|n| sizes.get_key_value(n.as_str()))
                .filter(|(n, _)| seen.insert(n))
                .map(|(_, &b)| b)
                .sum()
        })
        .collect()
}

/// For each boundary position `c` (between `order[c-1]` and `order[c]`), how many
/// node-produced tensors cross it: produced before, read at or after it, or a graph
/// output (which must reach the end).
pub(super) fn crossings(graph: &GraphProto, order: &[usize]) -> Vec<usize> {
    let n = order.len();
    let mut produced_at: HashMap<&str, usize> = HashMap::new();
    for (pos, &i) in order.iter().enumerate() {
        for out in graph.node[i].output.iter().filter(|o| !o.is_empty()) {
            produced_at.insert(out.as_str(), pos);
        }
    }
    let mut last_use: HashMap<&str, usize> = HashMap::new();
    for (pos, &i) in order.iter().enumerate() {
        for input in &graph.node[i].input {
            if let Some((name, _)) = produced_at.get_key_value(input.as_str()) {
                last_use.insert(name, pos);
            }
        }
    }
    for out in &graph.output {
        if let Some((name, _)) = produced_at.get_key_value(out.name()) {
            last_use.insert(name, n);
        }
    }
    // +1 from the boundary after the producer, -1 after the last reader.
    let mut delta = vec![0isize; n + 2];
    for (name, &last) in &last_use {
        let p = produced_at[name];
        if last > p {
            delta[p + 1] += 1;
            delta[last + 1] -= 1;
        }
    }
    let mut live = 0isize;
    delta
        .iter()
        .take(n + 1)
        .map(|d| {
            live += d;
            usize::try_from(live).unwrap_or(0)
        })
        .collect()
}

/// Stage boundaries (positions in the node order, increasing, each stage non-empty)
/// that put each stage's parameter bytes as near as possible to an equal share. Where
/// several positions are as near (a run of nodes without weights), the one with fewest
/// crossing tensors wins, then the earliest.
pub(super) fn choose_cuts(weights: &[u64], crossing: &[usize], stages: usize) -> Vec<usize> {
    let n = weights.len();
    let total: u64 = weights.iter().sum();
    // A model without parameters is balanced by node count instead.
    let weights: Vec<u64> = if total == 0 {
        vec![1; n]
    } else {
        weights.to_vec()
    };
    let total = u128::from(weights.iter().sum::<u64>());
    let mut prefix = vec![0u128; n + 1];
    for (i, w) in weights.iter().enumerate() {
        prefix[i + 1] = prefix[i] + u128::from(*w);
    }
    let stages_u = stages as u128;
    let mut cuts = Vec::with_capacity(stages.saturating_sub(1));
    let mut previous = 0;
    for k in 1..stages {
        // Scaled by `stages` to stay in integers: |prefix*stages - total*k|.
        let target = total * k as u128;
        let last_allowed = n - (stages - k);
        let best = (previous + 1..=last_allowed)
            .min_by_key(|&c| {
                let distance = (prefix[c] * stages_u).abs_diff(target);
                (distance, crossing.get(c).copied().unwrap_or(usize::MAX), c)
            })
            .unwrap_or(previous + 1);
        cuts.push(best);
        previous = best;
    }
    cuts
}

#[cfg(test)]
mod tests {
    use super::choose_cuts;

    #[test]
    fn cuts_balance_weights() {
        let w = [10, 0, 0, 10, 0, 10, 0, 10];
        let crossing = [0, 3, 1, 2, 2, 1, 2, 1, 0];
        // Half of the 40 bytes lies before position 4 and before position 5; fewer
        // tensors cross at 5.
        assert_eq!(choose_cuts(&w, &crossing, 2), vec![5]);
        assert_eq!(choose_cuts(&w, &crossing, 4), vec![2, 5, 7]);
        // No weights: by node count.
        assert_eq!(choose_cuts(&[0; 4], &[0; 5], 2), vec![2]);
        // Every stage keeps at least one node even when the weight sits at the end.
        assert_eq!(choose_cuts(&[0, 0, 0, 9], &[0; 5], 3), vec![1, 2]);
    }
}
