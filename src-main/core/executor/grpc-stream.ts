import type * as grpc from '@grpc/grpc-js';

import { Code, GrpcError } from '../errors.js';

/**
 * Pull-style reading of a grpc-js response stream: next() resolves with the
 * next message, with undefined once the call ended with OK, and rejects
 * with the call's error (a ServiceError carrying its code) once it failed.
 * Messages that arrived before the error are still returned first.
 */
export interface StreamReader<T> {
  next(): Promise<T | undefined>;
}

type ResponseStream<T> = grpc.ClientReadableStream<T> | grpc.ClientDuplexStream<unknown, T>;

export function readStream<T>(stream: ResponseStream<T>): StreamReader<T> {
  const buffered: T[] = [];
  const waiters: { resolve: (m: T | undefined) => void; reject: (e: unknown) => void }[] = [];
  let failure: unknown;
  let ended = false;

  const settle = () => {
    while (waiters.length > 0 && (buffered.length > 0 || ended)) {
      const waiter = waiters.shift()!;
      if (buffered.length > 0) waiter.resolve(buffered.shift());
      else if (failure !== undefined) waiter.reject(failure);
      else waiter.resolve(undefined);
    }
  };
  stream.on('data', (message: T) => {
    buffered.push(message);
    settle();
  });
  // The call's status can arrive while earlier messages still sit in the
  // stream's buffer, so the end is marked on 'end' (emitted after the last
  // message), with a fallback in case it never comes after an error.
  const end = () => {
    ended = true;
    settle();
  };
  stream.on('end', end);
  stream.on('error', (err: unknown) => {
    failure ??= err;
    setImmediate(end);
  });
  stream.on('status', (status: grpc.StatusObject) => {
    if (status.code !== Code.OK) failure ??= new GrpcError(status.code, status.details);
    setImmediate(end);
  });

  return {
    next: () =>
      new Promise<T | undefined>((resolve, reject) => {
        waiters.push({ resolve, reject });
        settle();
      }),
  };
}
