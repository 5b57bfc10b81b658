//! The nodes as the filter chain scans them. Label, node-name and extended-resource strings are
//! interned to [`Sym`]s and taints to ids in a table of the cluster's distinct taints, so a pod's
//! strings are looked up once per decision and each node then costs integer compares instead of
//! a walk through its own `BTreeMap` of heap strings. Each concern's data sits in its own column,
//! so a filter streams only what it reads; and [`NodeSet`]s list the few nodes that are cordoned,
//! not ready, tainted or at each energy level, so filters about rare conditions touch only those.
//!
//! A snapshot mirrors a node slice (index `i` describes node `i`). The cluster cache keeps one up
//! to date as nodes, pods and reports change ([`Snapshot::set`] and friends), so no decision
//! builds one.

use std::collections::HashMap;
use std::sync::Arc;

use wattwise_core::EnergyLevel;

use super::types::{HostPort, NodePower, NodeState, Resources, Taint};

/// An interned string. Ids are per snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sym(u32);

impl Sym {
    /// What a string no node carries resolves to: equal to no interned id.
    const UNKNOWN: Sym = Sym(u32::MAX);
}

#[derive(Debug, Default)]
struct Symbols {
    ids: HashMap<Arc<str>, Sym>,
    strings: Vec<Arc<str>>,
}

impl Symbols {
    fn intern(&mut self, s: &str) -> Sym {
        if let Some(&sym) = self.ids.get(s) {
            return sym;
        }
        let sym = u32::try_from(self.strings.len())
            .ok()
            .filter(|&id| id != Sym::UNKNOWN.0)
            .map(Sym)
            .expect("fewer than 2^32 - 1 strings");
        let s: Arc<str> = s.into();
        self.strings.push(s.clone());
        self.ids.insert(s, sym);
        sym
    }

    fn get(&self, s: &str) -> Sym {
        self.ids.get(s).copied().unwrap_or(Sym::UNKNOWN)
    }

    fn resolve(&self, sym: Sym) -> &str {
        &self.strings[sym.0 as usize]
    }
}

/// A set of node indices, one bit per node.
#[derive(Debug, Clone, Default)]
pub(crate) struct NodeSet {
    words: Vec<u64>,
}

impl NodeSet {
    /// Nodes `0..len`.
    pub fn full(len: usize) -> Self {
        let mut words = vec![u64::MAX; len.div_ceil(64)];
        if !len.is_multiple_of(64) {
            words[len / 64] = (1 << (len % 64)) - 1;
        }
        Self { words }
    }

    pub fn contains(&self, index: usize) -> bool {
        self.word(index / 64) & (1 << (index % 64)) != 0
    }

    pub fn set(&mut self, index: usize, member: bool) {
        let (word, bit) = (index / 64, 1 << (index % 64));
        if word >= self.words.len() {
            if !member {
                return;
            }
            self.words.resize(word + 1, 0);
        }
        if member {
            self.words[word] |= bit;
        } else {
            self.words[word] &= !bit;
        }
    }

    /// `last` leaves; `index` takes its membership (as `Vec::swap_remove` moves the last item).
    fn swap_remove(&mut self, index: usize, last: usize) {
        self.set(index, self.contains(last));
        self.set(last, false);
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Members of both.
    pub fn and(&self, other: &NodeSet) -> NodeSet {
        self.zip(other, |a, b| a & b)
    }

    /// Members of `self` not in `other`.
    pub fn and_not(&self, other: &NodeSet) -> NodeSet {
        self.zip(other, |a, b| a & !b)
    }

    /// Members of either.
    pub fn or(&self, other: &NodeSet) -> NodeSet {
        let len = self.words.len().max(other.words.len());
        Self {
            words: (0..len).map(|w| self.word(w) | other.word(w)).collect(),
        }
    }

    /// Word by word over `self`'s length.
    fn zip(&self, other: &NodeSet, op: impl Fn(u64, u64) -> u64) -> NodeSet {
        Self {
            words: (self.words.iter().enumerate())
                .map(|(w, &word)| op(word, other.word(w)))
                .collect(),
        }
    }

    /// Word `index` (nodes `64 * index ..`); zero past the end.
    pub fn word(&self, index: usize) -> u64 {
        self.words.get(index).copied().unwrap_or(0)
    }

    /// Words in the set's storage (some may be zero).
    pub fn word_count(&self) -> usize {
        self.words.len()
    }

    /// Members, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                let bit = bits.trailing_zeros() as usize;
                (bits != 0).then(|| {
                    bits &= bits - 1;
                    64 * w + bit
                })
            })
        })
    }
}

/// CPU, memory, ephemeral storage and pods of a [`Resources`]; extended resources are kept
/// apart, interned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Amounts {
    pub cpu_millicores: u64,
    pub memory_bytes: u64,
    pub ephemeral_storage_bytes: u64,
    pub pods: u64,
}

impl From<&Resources> for Amounts {
    fn from(r: &Resources) -> Self {
        Self {
            cpu_millicores: r.cpu_millicores,
            memory_bytes: r.memory_bytes,
            ephemeral_storage_bytes: r.ephemeral_storage_bytes,
            pods: r.pods,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Fit {
    requested: Amounts,
    allocatable: Amounts,
}

/// One node's entries in every column.
struct Row {
    name: Sym,
    unschedulable: bool,
    ready: bool,
    labels: Vec<(Sym, Sym)>,
    taints: Box<[u32]>,
    fit: Fit,
    extended: Box<[(Sym, u64, u64)]>,
    host_ports: Box<[HostPort]>,
    power: NodePower,
}

impl Row {
    /// What the node refers to: interned strings, label slots and taints.
    fn references(&self) -> usize {
        1 + 3 * self.labels.len() + self.taints.len() + self.extended.len()
    }
}

/// A node's run of `Snapshot::label_pairs`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

/// Per-node columns, the string and taint tables their ids point into, and sets of the nodes in
/// conditions few nodes are in.
#[derive(Debug, Default)]
pub struct Snapshot {
    names: Vec<Sym>,
    /// Each node's (key, value) pairs, in its label order, in one array: scanning nodes in order
    /// reads it in order.
    labels: Vec<Span>,
    label_pairs: Vec<(Sym, Sym)>,
    /// Ids into `taint_table`, in the node's order.
    taints: Vec<Box<[u32]>>,
    fits: Vec<Fit>,
    /// (resource, requested, allocatable) for every extended resource the node has or has pods
    /// requesting.
    extended: Vec<Box<[(Sym, u64, u64)]>>,
    host_ports: Vec<Box<[HostPort]>>,
    power: Vec<NodePower>,

    cordoned: NodeSet,
    not_ready: NodeSet,
    tainted: NodeSet,
    /// Nodes priced from a fresh report.
    fresh: NodeSet,
    /// Indexed by [`energy_slot`].
    at_energy: [NodeSet; 1 + EnergyLevel::ALL.len()],

    symbols: Symbols,
    taint_table: Vec<Taint>,
    taint_ids: HashMap<Taint, u32>,
    /// Sum of the nodes' [`Row::references`] (see [`Snapshot::wasteful`]).
    references: usize,
}

impl Snapshot {
    pub fn new(nodes: &[NodeState]) -> Self {
        let mut snapshot = Self::default();
        for node in nodes {
            snapshot.push(node);
        }
        snapshot
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Appends `node`.
    pub fn push(&mut self, node: &NodeState) {
        let row = self.row(node);
        let index = self.len();
        self.mark(index, &row);
        self.references += row.references();
        let labels = self.append_labels(&row.labels);
        self.names.push(row.name);
        self.labels.push(labels);
        self.taints.push(row.taints);
        self.fits.push(row.fit);
        self.extended.push(row.extended);
        self.host_ports.push(row.host_ports);
        self.power.push(row.power);
    }

    /// Node `index` is now `node`.
    pub fn set(&mut self, index: usize, node: &NodeState) {
        let row = self.row(node);
        self.mark(index, &row);
        self.references -= self.node(index).references();
        self.references += row.references();
        let span = self.labels[index];
        if span.len as usize == row.labels.len() {
            let start = span.start as usize;
            self.label_pairs[start..start + row.labels.len()].copy_from_slice(&row.labels);
        } else {
            self.labels[index] = self.append_labels(&row.labels);
        }
        self.names[index] = row.name;
        self.taints[index] = row.taints;
        self.fits[index] = row.fit;
        self.extended[index] = row.extended;
        self.host_ports[index] = row.host_ports;
        self.power[index] = row.power;
    }

    /// Only the power side of node `index` changed (a report, its expiry, a pod bound there).
    pub fn set_power(&mut self, index: usize, power: &NodePower) {
        self.mark_power(index, power);
        self.power[index] = power.clone();
    }

    /// Only what node `index`'s pods use changed (a pod placed, bound, finished or deleted):
    /// cheaper than [`Snapshot::set`], no label or taint is looked at.
    pub fn set_usage(
        &mut self,
        index: usize,
        allocatable: &Resources,
        requested: &Resources,
        used_host_ports: &[HostPort],
    ) {
        let extended = extended_column(&mut self.symbols, requested, allocatable);
        self.references -= self.extended[index].len();
        self.references += extended.len();
        self.fits[index] = Fit {
            requested: requested.into(),
            allocatable: allocatable.into(),
        };
        self.extended[index] = extended;
        self.host_ports[index] = used_host_ports.into();
    }

    /// Removes node `index`; the last node takes its place (as `Vec::swap_remove`).
    pub fn swap_remove(&mut self, index: usize) {
        self.references -= self.node(index).references();
        self.names.swap_remove(index);
        self.labels.swap_remove(index);
        self.taints.swap_remove(index);
        self.fits.swap_remove(index);
        self.extended.swap_remove(index);
        self.host_ports.swap_remove(index);
        self.power.swap_remove(index);
        let last = self.len();
        let sets = [
            &mut self.cordoned,
            &mut self.not_ready,
            &mut self.tainted,
            &mut self.fresh,
        ];
        for set in sets.into_iter().chain(&mut self.at_energy) {
            set.swap_remove(index, last);
        }
    }

    /// Strings, taints and label slots no node refers to any more (old label values, deleted
    /// nodes' names and labels) stay until the snapshot is rebuilt; true once they could
    /// outnumber the live ones, so that rebuilding then keeps memory proportional to the nodes
    /// at an amortised constant cost per update.
    pub fn wasteful(&self) -> bool {
        let stored = self.symbols.strings.len() + self.taint_table.len() + self.label_pairs.len();
        stored > 2 * self.references + 1024
    }

    pub fn name(&self, index: usize) -> &str {
        self.symbols.resolve(self.names[index])
    }

    /// Node `index`, as filters read it.
    pub(crate) fn node(&self, index: usize) -> Node<'_> {
        Node { nodes: self, index }
    }

    pub fn power(&self, index: usize) -> &NodePower {
        &self.power[index]
    }

    /// The mean CPU request of the pods on the nodes (their CPU requests' sum over their
    /// count); `None` without pods.
    /// Only slot pricing's full path reads it: a pass over the nodes' columns is cheaper than
    /// keeping a sum up to date on every usage change.
    pub(crate) fn mean_pod_cpu_millicores(&self) -> Option<f64> {
        let (cpu, pods) = self.fits.iter().fold((0u64, 0u64), |(cpu, pods), fit| {
            (
                cpu.saturating_add(fit.requested.cpu_millicores),
                pods.saturating_add(fit.requested.pods),
            )
        });
        (pods > 0).then(|| cpu as f64 / pods as f64)
    }

    /// The id of `s` in this snapshot, or one no node carries.
    pub(crate) fn symbol(&self, s: &str) -> Sym {
        self.symbols.get(s)
    }

    pub(crate) fn resolve(&self, sym: Sym) -> &str {
        self.symbols.resolve(sym)
    }

    /// The cluster's distinct taints, indexed by [`Node::taints`]' ids.
    pub(crate) fn taint_table(&self) -> &[Taint] {
        &self.taint_table
    }

    /// Nodes marked unschedulable.
    pub(crate) fn cordoned(&self) -> &NodeSet {
        &self.cordoned
    }

    pub(crate) fn not_ready(&self) -> &NodeSet {
        &self.not_ready
    }

    /// Nodes with at least one taint.
    pub(crate) fn tainted(&self) -> &NodeSet {
        &self.tainted
    }

    /// Nodes priced from a fresh report.
    pub(crate) fn fresh(&self) -> &NodeSet {
        &self.fresh
    }

    /// Nodes whose energy level is `level` (`None`: unknown).
    pub(crate) fn at_energy(&self, level: Option<EnergyLevel>) -> &NodeSet {
        &self.at_energy[energy_slot(level)]
    }

    fn append_labels(&mut self, labels: &[(Sym, Sym)]) -> Span {
        let span = Span {
            start: u32::try_from(self.label_pairs.len()).expect("fewer than 2^32 labels"),
            len: u32::try_from(labels.len()).expect("fewer than 2^32 labels"),
        };
        self.label_pairs.extend_from_slice(labels);
        span
    }

    /// Puts node `index` in the sets `row` belongs to, and out of the others.
    fn mark(&mut self, index: usize, row: &Row) {
        self.cordoned.set(index, row.unschedulable);
        self.not_ready.set(index, !row.ready);
        self.tainted.set(index, !row.taints.is_empty());
        self.mark_power(index, &row.power);
    }

    fn mark_power(&mut self, index: usize, power: &NodePower) {
        self.fresh.set(index, power.fresh);
        for (slot, set) in self.at_energy.iter_mut().enumerate() {
            set.set(index, slot == energy_slot(power.energy));
        }
    }

    fn row(&mut self, node: &NodeState) -> Row {
        let symbols = &mut self.symbols;
        let labels = node
            .labels
            .iter()
            .map(|(key, value)| (symbols.intern(key), symbols.intern(value)))
            .collect();
        let extended = extended_column(symbols, &node.requested, &node.allocatable);
        let taints = node.taints.iter().map(|t| self.taint_id(t)).collect();
        Row {
            name: self.symbols.intern(&node.name),
            unschedulable: node.unschedulable,
            ready: node.ready,
            labels,
            taints,
            fit: Fit {
                requested: (&node.requested).into(),
                allocatable: (&node.allocatable).into(),
            },
            extended,
            host_ports: node.used_host_ports.as_slice().into(),
            power: node.power.clone(),
        }
    }

    fn taint_id(&mut self, taint: &Taint) -> u32 {
        if let Some(&id) = self.taint_ids.get(taint) {
            return id;
        }
        let id = u32::try_from(self.taint_table.len()).expect("fewer than 2^32 taints");
        self.taint_table.push(taint.clone());
        self.taint_ids.insert(taint.clone(), id);
        id
    }
}

/// (resource, requested, allocatable) for every extended resource a node has or has pods
/// requesting.
fn extended_column(
    symbols: &mut Symbols,
    requested: &Resources,
    allocatable: &Resources,
) -> Box<[(Sym, u64, u64)]> {
    let mut extended: Vec<(Sym, u64, u64)> = requested
        .extended
        .iter()
        .map(|(name, &amount)| {
            let allocatable = allocatable.extended.get(name).copied().unwrap_or(0);
            (symbols.intern(name), amount, allocatable)
        })
        .collect();
    for (name, &amount) in &allocatable.extended {
        if !requested.extended.contains_key(name) {
            extended.push((symbols.intern(name), 0, amount));
        }
    }
    extended.into()
}

/// `Snapshot::at_energy`'s index for a level.
fn energy_slot(level: Option<EnergyLevel>) -> usize {
    level.map_or(0, |level| 1 + level as usize)
}

/// Node `index` of a snapshot, as a filter reads it.
#[derive(Clone, Copy)]
pub(crate) struct Node<'a> {
    nodes: &'a Snapshot,
    index: usize,
}

impl<'a> Node<'a> {
    pub fn name(self) -> Sym {
        self.nodes.names[self.index]
    }

    /// The node's value for label `key`, if it has the label.
    pub fn label(self, key: Sym) -> Option<Sym> {
        let Span { start, len } = self.nodes.labels[self.index];
        let labels = &self.nodes.label_pairs[start as usize..(start + len) as usize];
        labels.iter().find(|(k, _)| *k == key).map(|&(_, v)| v)
    }

    /// Ids into [`Snapshot::taint_table`], in the node's order.
    pub fn taints(self) -> &'a [u32] {
        &self.nodes.taints[self.index]
    }

    pub fn requested(self) -> &'a Amounts {
        &self.nodes.fits[self.index].requested
    }

    pub fn allocatable(self) -> &'a Amounts {
        &self.nodes.fits[self.index].allocatable
    }

    /// (requested, allocatable) of an extended resource; zero for both when the node has none.
    pub fn extended(self, resource: Sym) -> (u64, u64) {
        self.nodes.extended[self.index]
            .iter()
            .find(|(r, _, _)| *r == resource)
            .map_or((0, 0), |&(_, requested, allocatable)| {
                (requested, allocatable)
            })
    }

    pub fn host_ports(self) -> &'a [HostPort] {
        &self.nodes.host_ports[self.index]
    }

    /// As [`Row::references`].
    fn references(self) -> usize {
        let n = self.nodes;
        let i = self.index;
        1 + 3 * n.labels[i].len as usize + n.taints[i].len() + n.extended[i].len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fixtures::node;

    #[test]
    fn nodes_resolve_to_their_strings() {
        let mut a = node("a");
        a.labels.insert("zone".into(), "z1".into());
        a.requested.extended.insert("example.com/dongle".into(), 1);
        a.allocatable
            .extended
            .insert("example.com/dongle".into(), 2);
        a.allocatable.extended.insert("nvidia.com/gpu".into(), 4);
        let b = node("b");
        let snapshot = Snapshot::new(&[a, b]);
        assert_eq!(snapshot.len(), 2);
        assert_eq!((snapshot.name(0), snapshot.name(1)), ("a", "b"));
        let a = snapshot.node(0);
        let zone = a.label(snapshot.symbol("zone")).unwrap();
        assert_eq!(snapshot.resolve(zone), "z1");
        assert_eq!(a.label(snapshot.symbol("absent")), None);
        assert_eq!(a.extended(snapshot.symbol("example.com/dongle")), (1, 2));
        assert_eq!(a.extended(snapshot.symbol("nvidia.com/gpu")), (0, 4));
        assert_eq!(a.extended(snapshot.symbol("absent")), (0, 0));
        let b = snapshot.node(1);
        assert_eq!(b.extended(snapshot.symbol("nvidia.com/gpu")), (0, 0));
    }

    #[test]
    fn updates_keep_columns_and_sets_in_step() {
        let mut cordoned = node("a");
        cordoned.unschedulable = true;
        let mut powerless = node("c");
        powerless.power.energy = Some(EnergyLevel::Powerless);
        let mut snapshot = Snapshot::new(&[cordoned, node("b"), powerless]);
        assert_eq!(snapshot.cordoned().iter().collect::<Vec<_>>(), [0]);
        snapshot.swap_remove(0);
        assert_eq!((snapshot.name(0), snapshot.name(1)), ("c", "b"));
        assert_eq!(snapshot.cordoned().len(), 0);
        let powerless = Some(EnergyLevel::Powerless);
        assert_eq!(
            snapshot.at_energy(powerless).iter().collect::<Vec<_>>(),
            [0]
        );
        assert_eq!(snapshot.at_energy(None).iter().collect::<Vec<_>>(), [1]);

        let mut renamed = node("d");
        renamed.power.fresh = false;
        renamed.ready = false;
        snapshot.set(1, &renamed);
        assert_eq!(snapshot.name(1), "d");
        assert!(!snapshot.power(1).fresh);
        assert_eq!(snapshot.not_ready().iter().collect::<Vec<_>>(), [1]);
        assert_eq!(snapshot.fresh().iter().collect::<Vec<_>>(), [0]);
        let mut d = node("d").power;
        d.energy = powerless;
        snapshot.set_power(1, &d);
        assert!(snapshot.power(1).fresh);
        assert_eq!(snapshot.power(1).energy, powerless);
        assert_eq!(snapshot.at_energy(powerless).len(), 2);
        assert_eq!(snapshot.fresh().len(), 2);
        assert_eq!(snapshot.at_energy(None).len(), 0);
    }

    #[test]
    fn relabelling_leaves_garbage_that_is_noticed() {
        let mut snapshot = Snapshot::new(&[node("a")]);
        assert!(!snapshot.wasteful());
        for i in 0..2000 {
            let mut n = node("a");
            n.labels.insert("build".into(), i.to_string());
            snapshot.set(0, &n);
        }
        assert!(snapshot.wasteful());
    }

    #[test]
    fn node_sets() {
        let mut set = NodeSet::full(130);
        assert_eq!(set.len(), 130);
        assert_eq!(set.word(2), 0b11);
        set.set(64, false);
        set.set(200, true);
        assert!(!set.contains(64) && set.contains(65) && set.contains(200));
        assert_eq!(
            set.iter().filter(|&i| i >= 63).collect::<Vec<_>>()[..3],
            [63, 65, 66]
        );
        set.swap_remove(3, 200);
        assert!(set.contains(3) && !set.contains(200));
        assert_eq!(NodeSet::default().iter().count(), 0);
        let (a, b) = (NodeSet::full(3), NodeSet::full(70));
        assert_eq!(a.and(&b).iter().collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(b.and_not(&a).iter().next(), Some(3));
        assert_eq!(b.and_not(&a).len(), 67);
        assert_eq!(a.or(&b).len(), 70);
        assert!(a.and_not(&b).len() == 0 && a.len() == 3);
    }

    #[test]
    fn the_mean_pod_request_follows_every_update() {
        let with_pods = |name: &str, cpu: u64, pods: u64| {
            let mut n = node(name);
            n.requested.cpu_millicores = cpu;
            n.requested.pods = pods;
            n
        };
        let mut s = Snapshot::new(&[node("empty")]);
        assert_eq!(s.mean_pod_cpu_millicores(), None);
        s.push(&with_pods("a", 3000, 2));
        s.push(&with_pods("b", 1000, 2));
        assert_eq!(s.mean_pod_cpu_millicores(), Some(1000.0));
        let b = with_pods("b", 5000, 4);
        s.set_usage(2, &b.allocatable, &b.requested, &[]);
        assert_eq!(s.mean_pod_cpu_millicores(), Some(8000.0 / 6.0));
        s.set(1, &with_pods("a", 1000, 1));
        assert_eq!(s.mean_pod_cpu_millicores(), Some(6000.0 / 5.0));
        s.swap_remove(2);
        assert_eq!(s.mean_pod_cpu_millicores(), Some(1000.0));
        s.swap_remove(1);
        assert_eq!(s.mean_pod_cpu_millicores(), None);
    }
}
