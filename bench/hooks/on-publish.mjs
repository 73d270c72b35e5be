// bench/hooks.ts: a hook that provides onPublish and changes nothing (the cost of a hook in use).
export default () => ({
  id: 'bench-on-publish',
  onPublish() {},
});
