import { checkDigest } from '../digest.js';
import { messageOf } from '../errors.js';
import type { ExecuteResponse } from '../proto/index.js';
import type { TaskContext, TaskExecutor } from './task.js';

/**
 * Decorator: looks the Action up in the Action Cache before executing it
 * (`executor.check_action_result_before_execution`), unless the client asked
 * to skip the cache (ExecuteRequest.skip_cache_lookup). A hit is answered
 * as a cached result without running anything; a miss, or a lookup that
 * fails, runs the inner executor.
 */
export function withCacheCheck(inner: TaskExecutor): TaskExecutor {
  return {
    async execute(ctx: TaskContext): Promise<ExecuteResponse> {
      if (ctx.task.execute_request?.skip_cache_lookup) return inner.execute(ctx);
      const actionDigest = checkDigest(ctx.actionDigest);
      await ctx.publisher.publish('CACHE_CHECK');
      const cached = await ctx.store.getActionResult(actionDigest).catch((err) => {
        ctx.logger.warn({ err: messageOf(err) }, 'Action Cache lookup failed; executing');
        return undefined;
      });
      if (cached === undefined) return inner.execute(ctx);
      return { result: cached, cached_result: true, status: { code: 0, message: '' } };
    },
  };
}
