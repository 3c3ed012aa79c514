/**
 * @module Baselines for the placement benchmark: DeepSeek's EPLB (expert-parallelism load
 * balancer, github.com/deepseek-ai/EPLB, `eplb.py`) re-implemented in TypeScript, and static
 * round-robin placement.
 *
 * EPLB re-plans from scratch from one window of loads: (1) replicate — give each redundant slot to
 * the expert with the highest load per replica; (2) pack — heaviest replica first onto the
 * lightest instance that still has a free slot, every instance getting exactly the same number of
 * slots. Its hierarchical variant first packs expert groups onto nodes; it is here so the
 * published README example can be reproduced, and `rebalanceExperts` picks it exactly when the
 * reference does (groups divisible by nodes). Tokens are split evenly over an expert's replicas.
 */
import type { Placement, Replica } from "../../src/coordinator/placement";

export interface PackResult {
  /** Pack of each item. */
  packIndex: number[];
  /** Position of each item inside its pack. */
  rankInPack: number[];
}

/**
 * Greedy cardinality-constrained packing: items by descending weight, each onto the lightest pack
 * that still has room (first such pack on ties); every pack ends with exactly n/m items.
 */
export function balancedPacking(weight: readonly number[], numPacks: number): PackResult {
  const n = weight.length;
  if (numPacks < 1 || n % numPacks !== 0) {
    throw new Error(`balancedPacking: ${n} items do not split evenly over ${numPacks} packs`);
  }
  const perPack = n / numPacks;
  if (perPack === 1) return { packIndex: weight.map((_, i) => i), rankInPack: weight.map(() => 0) };
  const packIndex = new Array<number>(n).fill(-1);
  const rankInPack = new Array<number>(n).fill(-1);
  const packWeight = new Array<number>(numPacks).fill(0);
  const packItems = new Array<number>(numPacks).fill(0);
  for (const item of sortDescending(weight)) {
    let best = -1;
    for (let p = 0; p < numPacks; p++) {
      if (packItems[p] < perPack && (best < 0 || packWeight[p] < packWeight[best])) best = p;
    }
    packIndex[item] = best;
    rankInPack[item] = packItems[best];
    packWeight[best] += weight[item];
    packItems[best]++;
  }
  return { packIndex, rankInPack };
}

export interface ReplicateResult {
  /** Logical expert of each physical slot; the first `numLogical` slots are experts 0…n-1. */
  phy2log: number[];
  /** Replica rank of each physical slot within its expert. */
  rank: number[];
  /** Replica count of each logical expert. */
  logcnt: number[];
}

/** Gives each redundant slot to the expert with the highest load per replica (first on ties). */
export function replicateExperts(weight: readonly number[], numPhysical: number): ReplicateResult {
  const numLogical = weight.length;
  if (numPhysical < numLogical) {
    throw new Error(`replicateExperts: ${numPhysical} physical slots cannot hold ${numLogical} experts`);
  }
  const phy2log = Array.from({ length: numLogical }, (_, i) => i);
  const rank = new Array<number>(numLogical).fill(0);
  const logcnt = new Array<number>(numLogical).fill(1);
  for (let slot = numLogical; slot < numPhysical; slot++) {
    let best = 0;
    for (let e = 1; e < numLogical; e++) if (weight[e] / logcnt[e] > weight[best] / logcnt[best]) best = e;
    phy2log.push(best);
    rank.push(logcnt[best]);
    logcnt[best]++;
  }
  return { phy2log, rank, logcnt };
}

export interface RebalanceResult {
  /** [layer][physical slot] → logical expert; slot s lives on GPU/instance ⌊s / slotsPerGpu⌋. */
  phy2log: number[][];
  /** [layer][expert][replica] → physical slot, padded with -1. */
  log2phy: number[][][];
  /** [layer][expert] → replica count. */
  logcnt: number[][];
}

/**
 * EPLB's hierarchical policy for one layer: pack expert groups onto nodes, replicate within each
 * node, pack the node's physical experts onto its GPUs. Returns [phy2log, rank, logcnt] for the layer.
 */
function rebalanceLayerHierarchical(
  weight: readonly number[],
  numPhysical: number,
  numGroups: number,
  numNodes: number,
  numGpus: number,
): ReplicateResult {
  const numLogical = weight.length;
  const groupSize = numLogical / numGroups;
  const groupsPerNode = numGroups / numNodes;
  const phyPerGpu = numPhysical / numGpus;
  const logPerNode = numLogical / numNodes;
  const phyPerNode = numPhysical / numNodes;

  // Step 1: groups → nodes. mlog ("node-major logical") renumbers experts so node k owns a block.
  const groupTokens = Array.from({ length: numGroups }, (_, g) => {
    let sum = 0;
    for (let j = 0; j < groupSize; j++) sum += weight[g * groupSize + j];
    return sum;
  });
  const groupPack = balancedPacking(groupTokens, numNodes);
  const log2mlog = new Array<number>(numLogical);
  for (let g = 0; g < numGroups; g++) {
    const base = (groupPack.packIndex[g] * groupsPerNode + groupPack.rankInPack[g]) * groupSize;
    for (let j = 0; j < groupSize; j++) log2mlog[g * groupSize + j] = base + j;
  }
  const mlog2log = invert(log2mlog);

  const phy2log: number[] = new Array(numPhysical);
  const rank: number[] = new Array(numPhysical);
  const mlogcnt: number[] = new Array(numLogical);
  for (let node = 0; node < numNodes; node++) {
    // Step 2: replicate within the node.
    const tokens = Array.from({ length: logPerNode }, (_, j) => weight[mlog2log[node * logPerNode + j]]);
    const rep = replicateExperts(tokens, phyPerNode);
    rep.logcnt.forEach((c, j) => (mlogcnt[node * logPerNode + j] = c));
    // Step 3: physical experts → the node's GPUs.
    const phyTokens = rep.phy2log.map((j) => tokens[j] / rep.logcnt[j]);
    const pack = balancedPacking(phyTokens, numGpus / numNodes);
    for (let p = 0; p < phyPerNode; p++) {
      const slot = node * phyPerNode + pack.packIndex[p] * phyPerGpu + pack.rankInPack[p];
      phy2log[slot] = mlog2log[node * logPerNode + rep.phy2log[p]];
      rank[slot] = rep.rank[p];
    }
  }
  const logcnt = Array.from({ length: numLogical }, (_, e) => mlogcnt[log2mlog[e]]);
  return { phy2log, rank, logcnt };
}

/**
 * EPLB's entry point: `weight` is [layer][expert] load; returns the physical→logical map of
 * `numReplicas` slots (`numReplicas / numGpus` per GPU). Uses the hierarchical policy when
 * `numGroups % numNodes === 0`, else the global one (one group, one node), as the reference does.
 */
export function rebalanceExperts(
  weight: readonly (readonly number[])[],
  numReplicas: number,
  numGroups: number,
  numNodes: number,
  numGpus: number,
): RebalanceResult {
  const hierarchical = numGroups % numNodes === 0;
  return rebalance(weight, numReplicas, hierarchical ? numGroups : 1, hierarchical ? numNodes : 1, numGpus);
}

/** The global (non-hierarchical) policy: replicate over all slots, pack onto all GPUs. */
export function rebalanceExpertsGlobal(
  weight: readonly (readonly number[])[],
  numReplicas: number,
  numGpus: number,
): RebalanceResult {
  return rebalance(weight, numReplicas, 1, 1, numGpus);
}

function rebalance(
  weight: readonly (readonly number[])[],
  numReplicas: number,
  g: number,
  n: number,
  numGpus: number,
): RebalanceResult {
  const numLogical = weight[0]?.length ?? 0;
  if (numLogical % g !== 0) throw new Error(`rebalanceExperts: ${numLogical} experts do not split into ${g} groups`);
  if (numGpus % n !== 0) throw new Error(`rebalanceExperts: ${numGpus} GPUs do not split over ${n} nodes`);
  if (numReplicas % numGpus !== 0)
    throw new Error(`rebalanceExperts: ${numReplicas} replicas do not split over ${numGpus} GPUs`);
  const phy2log: number[][] = [];
  const log2phy: number[][][] = [];
  const logcnt: number[][] = [];
  for (const w of weight) {
    const r = rebalanceLayerHierarchical(w, numReplicas, g, n, numGpus);
    const maxcnt = Math.max(...r.logcnt);
    const l2p = Array.from({ length: numLogical }, () => new Array<number>(maxcnt).fill(-1));
    r.phy2log.forEach((e, slot) => (l2p[e][r.rank[slot]] = slot));
    phy2log.push(r.phy2log);
    log2phy.push(l2p);
    logcnt.push(r.logcnt);
  }
  return { phy2log, log2phy, logcnt };
}

// ── as placements ─────────────────────────────────────────────────────────────────────────────

export interface BaselineOptions {
  model: string;
  /** Instance names, one per instance; the budget is what each may hold. */
  instances: Placement["instances"];
}

/**
 * An EPLB plan as a `Placement`: `slotsPerInstance` slots on every instance, tokens split evenly
 * over an expert's slots. EPLB may put two slots of one expert on one instance; those become one
 * replica with the summed share (same load, one slot wasted), so the table stays well-formed.
 */
export function eplbPlacement(
  loads: readonly (readonly number[])[],
  slotsPerInstance: number,
  opts: BaselineOptions & { version?: number },
): Placement {
  const nInstances = opts.instances.length;
  const plan = rebalanceExpertsGlobal(loads, slotsPerInstance * nInstances, nInstances);
  const nExperts = loads[0].length;
  const replicas: Replica[][][] = plan.phy2log.map((p2l, layer) => {
    const perExpert: Replica[][] = Array.from({ length: nExperts }, () => []);
    p2l.forEach((e, slot) => {
      const instance = Math.floor(slot / slotsPerInstance);
      const share = 1 / plan.logcnt[layer][e];
      const existing = perExpert[e].find((r) => r.instance === instance);
      if (existing) existing.share += share;
      else perExpert[e].push({ instance, share });
    });
    return perExpert;
  });
  return {
    model: opts.model,
    version: opts.version ?? 0,
    nLayers: loads.length,
    nExperts,
    instances: opts.instances,
    replicas,
  };
}

/**
 * Static round-robin placement: expert e of layer l on instance (e + l) mod N, one replica each.
 * The layer offset spreads the lowest-numbered experts of different layers over different instances.
 */
export function roundRobinPlacement(
  nLayers: number,
  nExperts: number,
  opts: BaselineOptions & { version?: number },
): Placement {
  const n = opts.instances.length;
  const replicas = Array.from({ length: nLayers }, (_, l) =>
    Array.from({ length: nExperts }, (_, e) => [{ instance: (e + l) % n, share: 1 }]),
  );
  return { model: opts.model, version: opts.version ?? 0, nLayers, nExperts, instances: opts.instances, replicas };
}

// ── helpers ───────────────────────────────────────────────────────────────────────────────────

/** Indices by descending value; ties keep index order (a stable sort). */
function sortDescending(values: readonly number[]): number[] {
  return values.map((_, i) => i).sort((a, b) => values[b] - values[a] || a - b);
}

function invert(perm: readonly number[]): number[] {
  const inv = new Array<number>(perm.length);
  perm.forEach((p, i) => (inv[p] = i));
  return inv;
}
