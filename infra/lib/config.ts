/**
 * The worker's configuration document (`schemas/config.schema.json`), as the constructs
 * write it into `BLUEGREEN_CONFIG_JSON`. Key names are the schema's, snake_case.
 */

/** How traffic moves (SPEC §3). */
export type Strategy =
  | { kind: 'all-at-once' }
  | { kind: 'canary'; percent: number; bake: string }
  | { kind: 'linear'; step_percent: number; interval: string }
  | { kind: 'steps'; steps: { weight: number; pause?: string }[] };

/** What a push does while a deployment is active. */
export type Concurrency = 'queue' | 'supersede' | 'reject';

/** What the worker does with weights someone else wrote. */
export type Drift = 'reassert' | 'pause' | 'report';

/** A check run against the test listener before traffic moves. */
export type Validation =
  | { name?: string; url: string; expect_status?: number }
  | { name?: string; hook: string };

/** Phase timeouts and the poll interval, as durations (`"90s"`). */
export interface Timeouts {
  provision?: string;
  green?: string;
  testing?: string;
  approval?: string;
  promote?: string;
  poll?: string;
  reconcile_grace?: string;
}

/** One service of `services[]`. */
export interface ServiceEntry {
  name: string;
  cluster: string;
  blue_service: string;
  green_service: string;
  blue_target_group_arn: string;
  green_target_group_arn: string;
  /** The production rule, or … */
  production_listener_rule_arn?: string;
  /** … several, moved together. */
  production_listener_rule_arns?: string[];
  test_listener_rule_arn?: string;
  container_name: string;
  ecr_repository: string;
  tag_pattern?: string;
  strategy: Strategy;
  bake: string;
  termination_wait: string;
  /** A list (alarms on whichever colour is deployed), or one list per colour (only the target colour's gate a deployment). */
  rollback_alarms: string[] | { blue: string[]; green: string[] };
  approval: boolean;
  concurrency: Concurrency;
  drift: Drift;
  /** Fewest tasks the live colour runs; the worker owns the counts. */
  min_tasks: number;
  validations?: Validation[];
  timeouts?: Timeouts;
}

/** `worker`. */
export interface WorkerEntry {
  queue_url: string;
  table: string;
  event_bus: string;
  source: string;
  manual_source: string;
  region: string;
  account_id: string;
}

/** The whole document. */
export interface WorkerConfig {
  worker: WorkerEntry;
  services: ServiceEntry[];
}
