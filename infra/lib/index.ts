export * from './blue-green-service';
export * from './config';
export * from './controller';
export * from './dashboard';
export * from './guard';
export * from './runbooks';
export * from './checkov';
