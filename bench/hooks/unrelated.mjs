// bench/hooks.ts: a hook that provides only a session event, none on the publish path.
export default () => ({
  id: 'bench-unrelated',
  onSessionCreated() {},
});
