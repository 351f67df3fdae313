#!/usr/bin/env node
/**
 * Prints the CloudFormation stack policy that keeps stack updates off the colour services
 * and production rules of a synthesized template:
 *
 *   npm run -s stack-policy -- cdk.out/BluegreenExample.template.json > policy.json
 *   aws cloudformation set-stack-policy --stack-name BluegreenExample --stack-policy-body file://policy.json
 */
import * as fs from 'node:fs';
import { stackPolicy } from '../lib/guard';

const [file] = process.argv.slice(2);
if (!file) {
  process.stderr.write('usage: stack-policy <template.json>\n');
  process.exit(2);
}
process.stdout.write(`${JSON.stringify(stackPolicy(JSON.parse(fs.readFileSync(file, 'utf8'))), null, 2)}\n`);
