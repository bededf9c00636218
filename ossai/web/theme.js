// A classic script loaded in <head>, before the first paint: applies the theme the user chose with
// "Toggle theme" (kept in localStorage), so a dark-theme user never sees a white flash. Without a
// choice the page follows prefers-color-scheme (style.css).
try {
  const theme = localStorage.getItem("ossai.theme");
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
} catch {
  // storage disabled: follow the system
}
