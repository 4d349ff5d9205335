// ESLint flat config: typescript-eslint's type-aware recommended set over src/,
// test/, bench/ and examples/ (the files tsconfig.json includes). Formatting is
// prettier's job (`npm run lint` runs both); nothing here is about layout.
import js from '@eslint/js';
import { defineConfig, globalIgnores } from 'eslint/config';
import tseslint from 'typescript-eslint';

export default defineConfig(
  globalIgnores(['dist/', 'node_modules/', 'coverage/', 'test/fixtures/', 'bench/results/']),
  js.configs.recommended,
  tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    // An eslint-disable comment that suppresses nothing is an error, so the ones
    // left in the code each name a rule that fires there.
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      // A promise nobody awaits loses its rejection: the error surfaces as an
      // unhandled rejection far from its cause, or not at all.
      '@typescript-eslint/no-floating-promises': 'error',
      // An async callback where a void one is expected (event handlers, FUSE
      // callbacks, timers) drops its rejection the same way.
      '@typescript-eslint/no-misused-promises': 'error',
      // `x!` states an invariant without checking it; flagged, not forbidden
      // (noUncheckedIndexedAccess makes some of them the clearest spelling).
      '@typescript-eslint/no-non-null-assertion': 'warn',
      // Passing on a caught error (`catch (err) { return Promise.reject(err) }`) is
      // fine; a new rejection must still be an Error.
      '@typescript-eslint/prefer-promise-reject-errors': ['error', { allowThrowingUnknown: true }],
      // Off: methods of async interfaces (Backend, FileIO) stay `async` without an
      // await so that a throw in them is a rejection, never a synchronous throw.
      '@typescript-eslint/require-await': 'off',
    },
  },
  {
    // STYLE.md: below src/cli/, nothing writes to the console, exits the process or
    // reads argv; a library user gets errors and a silent logger instead.
    files: ['src/**/*.ts'],
    ignores: ['src/cli/**'],
    rules: {
      'no-console': 'error',
      'no-restricted-properties': [
        'error',
        { object: 'process', property: 'exit', message: 'only src/cli/ ends the process' },
        { object: 'process', property: 'argv', message: 'only src/cli/ reads argv' },
      ],
    },
  },
  { files: ['**/*.mjs', '**/*.cjs', '**/*.js'], extends: [tseslint.configs.disableTypeChecked] },
  {
    // Install-time scripts: plain CommonJS run by node before anything is built.
    files: ['scripts/**/*.js'],
    languageOptions: {
      sourceType: 'commonjs',
      globals: { require: 'readonly', module: 'writable', process: 'readonly', __dirname: 'readonly' },
    },
    rules: { '@typescript-eslint/no-require-imports': 'off' },
  },
);
