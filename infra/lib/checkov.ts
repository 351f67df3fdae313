import { CfnResource } from 'aws-cdk-lib';
import { IConstruct } from 'constructs';

/**
 * Records in the resource's template metadata that a checkov check is skipped on purpose,
 * with the reason (checkov reads `Metadata.checkov.skip`).
 */
export function skipCheckov(construct: IConstruct, id: string, comment: string): void {
  const resource = (construct instanceof CfnResource ? construct : construct.node.defaultChild) as CfnResource;
  const current = (resource.getMetadata('checkov') as { skip?: { id: string; comment: string }[] } | undefined) ?? {};
  resource.addMetadata('checkov', { skip: [...(current.skip ?? []), { id, comment }] });
}
