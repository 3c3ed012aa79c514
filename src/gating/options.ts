/**
 * @module Routing knobs a deployer sets (router temperature, expert capacity, noisy top-k), for
 * load-aware routing experiments. All are off by default, and off means the model's published
 * routing, bit for bit. They are read once from the deployment's vars (`parseRoutingOptions`),
 * never from inside the MoE math.
 */
import { numberVar, type Vars } from "../platform/env";

export interface RoutingOptions {
  /** Router logits are divided by this before scoring; 1 = off. */
  temperature: number;
  /**
   * Per-expert capacity = ceil(capacityFactor · n · topK / nExperts) assignments per layer call
   * (n = tokens in the call); beyond it a token goes to its next choice. null = unlimited (off).
   */
  capacityFactor: number | null;
  /** Std of Gaussian noise added to the router logits (noisy top-k, Shazeer et al. 2017); 0 = off. */
  noiseStd: number;
}

export const ROUTING_OFF: RoutingOptions = Object.freeze({ temperature: 1, capacityFactor: null, noiseStd: 0 });

/** The deployment vars that set the options (names as in wrangler.toml [vars]). */
export const ROUTING_VARS = {
  temperature: "ROUTER_TEMPERATURE",
  capacityFactor: "CAPACITY_FACTOR",
  noiseStd: "ROUTER_NOISE_STD",
} as const;

/** Options from vars; unset or empty vars leave a knob off. Errors name the var. */
export function parseRoutingOptions(vars: Vars): RoutingOptions {
  return {
    temperature: numberVar(vars, ROUTING_VARS.temperature, 1, { above: 0 }),
    capacityFactor: numberVar(vars, ROUTING_VARS.capacityFactor, null, { above: 0 }),
    noiseStd: numberVar(vars, ROUTING_VARS.noiseStd, 0, { min: 0 }),
  };
}
