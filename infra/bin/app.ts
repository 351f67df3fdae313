#!/usr/bin/env node
/**
 * The example app: `npm run synth` writes `cdk.out/BluegreenExample.template.json`, offline
 * and without credentials. Context `workerImage=<registry reference>` uses a pushed image
 * instead of building `docker/Dockerfile` as an asset.
 */
import { App, Validations } from 'aws-cdk-lib';
import { AwsSolutionsChecks } from 'cdk-nag';
import { ExampleStack } from '../lib/example';

const app = new App();
new ExampleStack(app, 'BluegreenExample', {
  description: 'bluegreen example: one blue-green service and the controller',
  workerImage: app.node.tryGetContext('workerImage'),
});
Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { verbose: true }));
