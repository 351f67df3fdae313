#!/usr/bin/env node
/**
 * The example app: `npm run synth` writes `cdk.out/BluegreenExample.template.json`, offline
 * and without credentials. Context `workerImage=<registry reference>` uses a pushed image
 * instead of building `docker/Dockerfile` as an asset; `-c emulator=true` the timings of
 * the emulated-stack test; `-c bluegreen:deployed=<dir or file>` the deployed templates the
 * production guard compares with (`-c bluegreen:allowProductionUpdate=true` lets a
 * deliberate change of a colour service or production rule through).
 */
import { App, Duration, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { ExampleStack } from '../lib/example';
import { ALLOW_CONTEXT, ProductionGuard } from '../lib/guard';

const app = new App();
new ExampleStack(app, 'BluegreenExample', {
  description: 'bluegreen example: one blue-green service and the controller',
  workerImage: app.node.tryGetContext('workerImage'),
  // `-c emulator=true`: timings for the emulated-stack test (steps that wait for promote,
  // no bake, one-second polls), so a deployment there takes seconds.
  webOverrides:
    app.node.tryGetContext('emulator') === 'true'
      ? {
          strategy: { kind: 'steps', steps: [{ weight: 50 }, { weight: 100 }] },
          bake: Duration.seconds(0),
          terminationWait: Duration.seconds(1),
          deregistrationDelay: Duration.seconds(0),
          timeouts: { poll: '1s', green: '60s', reconcile_grace: '2s' },
        }
      : undefined,
});
Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { verbose: true }));
const deployed = app.node.tryGetContext('bluegreen:deployed');
if (deployed) {
  Validations.of(app).addPlugins(new ProductionGuard({ deployed, allow: String(app.node.tryGetContext(ALLOW_CONTEXT)) === 'true' }));
}
