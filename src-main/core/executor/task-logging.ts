import { codeOf, messageOf } from '../errors.js';
import type { ExecuteResponse } from '../proto/index.js';
import type { OperationPublisher } from './publisher.js';
import type { TaskContext, TaskExecutor } from './task.js';

/**
 * Decorator: one debug line per task phase (as each progress Operation is
 * published) and one info line per outcome. The task's logger already
 * carries its task ID and action digest.
 */
export function withLogging(inner: TaskExecutor): TaskExecutor {
  return {
    async execute(ctx: TaskContext): Promise<ExecuteResponse> {
      const started = Date.now();
      const log = ctx.logger;
      const publisher: OperationPublisher = {
        publish: (stage, state) => {
          log.debug({ stage, state }, 'Task phase');
          return ctx.publisher.publish(stage, state);
        },
        complete: (response) => ctx.publisher.complete(response),
        close: () => ctx.publisher.close(),
      };
      try {
        const response = await inner.execute({ ...ctx, publisher });
        log.info(
          {
            exit_code: response.result?.exit_code ?? 0,
            status: response.status?.code ?? 0,
            cached: response.cached_result ?? false,
            duration_ms: Date.now() - started,
          },
          'Task executed',
        );
        return response;
      } catch (err) {
        log.warn(
          { code: codeOf(err), err: messageOf(err), duration_ms: Date.now() - started },
          'Task failed',
        );
        throw err;
      }
    },
  };
}
