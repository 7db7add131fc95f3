// js-libp2p v3 (libp2p 3.x, @libp2p/utils 7.x, yamux 8.x, ping 3.x, it-queue) calls
// Promise.withResolvers (ES2024, in Node.js from 22) although none of those packages declares a
// Node.js engine; on Node.js 20 the first stream fails with "Promise.withResolvers is not a
// function". This adds it, as the specification defines it, only where it is missing.
if (typeof Promise.withResolvers !== 'function') {
  Object.defineProperty(Promise, 'withResolvers', {
    configurable: true,
    writable: true,
    value: function withResolvers () {
      let resolve, reject
      const promise = new this((res, rej) => {
        resolve = res
        reject = rej
      })
      return { promise, resolve, reject }
    }
  })
}
